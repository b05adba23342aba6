"""Fine-tuning the department and urgency model: ``switchboard classify train`` (``make train``).

LoRA adapters on every linear layer of the backbone plus two linear heads, trained jointly with
class-weighted cross-entropy; seeded and reproducible on CPU. The training rows are the union of
the ``train.jsonl`` of every data folder, each folder's rows weighted by its weight (real
tweets count more than tweets written for the project). The dev split of the *selection* folder
(the last folder given that has one: by default the real tweets) selects the epoch, calibrates
the confidences (temperature scaling) and sets the critical threshold: the model is chosen for
the traffic it will see. Every folder's test split is only reported, never trained or tuned on.

``licences="commercial"`` keeps only rows whose licence allows commercial use (the project's
own tweets and the permissively licensed real sources); the artifact's card states the licence
that follows from what it was trained on (``training_licence``).

With a teacher (``--teacher``, a trained artifact, typically the shipped 6-layer model), a
student (``--layers N``) is trained by knowledge distillation: the teacher's logits for every
training text, and for optional unlabeled texts (``--unlabeled``), are computed once, and the
loss is ``alpha * hard + (1 - alpha) * T^2 * KL(teacher/T || student/T)`` on both heads;
unlabeled texts only get the second term.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from switchboard.classify.data import (
    DataFolder,
    LabeledTweet,
    commercial_use,
    content_sha256,
    default_data,
    licence_family,
    licence_of,
    load_labeled,
    read_tweets,
    spdx_name,
)
from switchboard.classify.evaluation import (
    expected_calibration_error,
    headline,
    macro_f1,
    per_label,
    report,
)
from switchboard.classify.lexical import (
    WEIGHTS,
    Blend,
    LexicalModel,
    blended,
    card_section,
    log_probabilities,
    training_labels,
)
from switchboard.classify.model import (
    DEFAULT_ARTIFACT,
    ENCODER_FILE,
    INSTALLED_BACKBONE,
    Calibration,
    TweetClassifier,
    decide_urgency,
    default_backbone,
    prepare_text,
    softmax,
)
from switchboard.classify.network import Encoder, Heads
from switchboard.shared.labels import Department, Urgency

log = logging.getLogger(__name__)

LORA_TARGETS = ["query", "key", "value", "dense"]  # every linear layer of a BERT-style encoder


ARTIFACT_VERSION = "minilm-lora-v1"


@dataclass(frozen=True, slots=True)
class TrainOptions:
    seed: int = 13
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3  # LoRA adapters (every encoder weight: about 1e-4)
    head_lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    lora_rank: int = 32  # 0: no adapters, every encoder weight is tuned (encoder.safetensors)
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    max_length: int = 96
    critical_weight: float = 2.0  # on top of balancing: missing a critical tweet costs most
    label_smoothing: float = 0.1  # of both losses; guards against over-confident memorization
    threads: int = 2
    layers: int | None = None  # keep only the backbone's first N layers (faster, see README)
    limit: int | None = None  # train on the first N rows only (smoke tests)
    teacher: str | None = None  # artifact folder to distil from (None: labels only)
    unlabeled: str | None = None  # JSONL of extra texts ("text"): distillation targets only
    distil_alpha: float = 0.5  # weight of the hard-label loss; the teacher's gets 1 - alpha
    distil_temperature: float = 2.0
    init_from_teacher: bool = False  # start from what the teacher tuned (kept layers) and heads
    licences: str = "all"  # "commercial": only rows whose licence allows commercial use
    version: str | None = None  # the artifact's name (default: from layers and recipe)
    lexical: bool = True  # blend in a TF-IDF model (lexical.py), weights chosen on dev


@dataclass(frozen=True, slots=True)
class Distillation:
    """The teacher's logits for every training text: the labeled rows first, then ``extra``
    (unlabeled texts, which get no hard-label loss)."""

    department: torch.Tensor
    urgency: torch.Tensor
    extra: list[str]
    alpha: float
    temperature: float


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over rows.

    The ``T^2`` keeps the gradient's scale independent of the temperature (Hinton et al.)."""
    return temperature**2 * torch.nn.functional.kl_div(
        torch.log_softmax(student / temperature, dim=-1),
        torch.log_softmax(teacher / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def blended_loss(
    hard: torch.Tensor, soft: torch.Tensor, labeled_share: float, alpha: float
) -> torch.Tensor:
    """``alpha * hard + (1 - alpha) * soft`` per row, averaged over the batch.

    ``hard`` is the mean over the batch's labeled rows and ``soft`` over all of its rows; scaling
    ``hard`` by the labeled share gives each labeled row the same weight whatever the mix, and
    an unlabeled row only its distillation term."""
    return alpha * labeled_share * hard + (1 - alpha) * soft


@torch.inference_mode()
def embed(
    encoder: Encoder, texts: list[str], max_length: int = 128, batch_size: int = 64
) -> torch.Tensor:
    """Mean-pooled encodings of ``texts``, in order (batched by length to keep padding small)."""
    if not texts:
        return torch.empty(0, encoder.dim)
    chunks = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        batch = encoder.tokenize([texts[i] for i in order[start : start + batch_size]], max_length)
        chunks.append(encoder(batch["input_ids"], batch["attention_mask"]))
    encoded = torch.cat(chunks)
    restored = torch.empty_like(encoded)
    restored[torch.tensor(order)] = encoded
    return restored


def class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=classes).float().clamp(min=1)
    return counts.sum() / (classes * counts)


def batches(
    size: int, batch_size: int, rng: random.Random, lengths: list[int]
) -> Iterator[list[int]]:
    """Shuffled batches, sorted by length within pools of 16 batches to cut padding."""
    order = list(range(size))
    rng.shuffle(order)
    pool = batch_size * 16
    chunks = []
    for start in range(0, size, pool):
        block = sorted(order[start : start + pool], key=lengths.__getitem__)
        chunks += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    rng.shuffle(chunks)
    yield from chunks


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimizes the negative log-likelihood on held-out logits."""
    logits = logits.detach().clone()  # out of inference mode, so autograd may use it
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):  # a degenerate dev set (tiny, or perfectly separated)
        return 1.0
    return min(max(temperature, 0.05), 20.0)


CRITICAL_RECALL_TARGET = 0.90
CRITICAL_PRECISION_FLOOR = 0.50


def fit_critical_threshold(probs: torch.Tensor, gold: list[Urgency]) -> float:
    """The critical threshold (0.05 to 0.6) chosen on the dev split.

    The highest threshold whose critical recall reaches the target (0.90) while at least half
    of its alerts are critical: every critical tweet we can catch, but an alert that cries wolf
    gets muted. When no threshold does both, the one with the best F2 (a missed critical tweet
    weighs four times a false alarm). Ties go to the higher threshold, the one that raises fewer
    alarms."""
    urgencies = list(Urgency)
    gold_values = [u.value for u in gold]
    best = (-1.0, 0.5)
    for step in range(60, 4, -1):
        threshold = step / 100
        predicted = [urgencies[decide_urgency(p, urgencies, threshold)].value for p in probs]
        figures = per_label(gold_values, predicted, [Urgency.CRITICAL.value])["critical"]
        if (
            figures["recall"] >= CRITICAL_RECALL_TARGET
            and figures["precision"] >= CRITICAL_PRECISION_FLOOR
        ):
            return threshold
        score = round(f_beta(figures["precision"], figures["recall"], beta=2.0), 6)
        if score > best[0]:
            best = (score, threshold)
    return best[1]


THRESHOLD_ROWS = "drawn"  # the dev rows new calibrations fit the critical threshold on


def threshold_rows(rows: Sequence[LabeledTweet], which: str = THRESHOLD_ROWS) -> list[int]:
    """The dev rows the critical threshold is fitted on, by index.

    ``"drawn"``: the rows drawn as traffic is, leaving out those read because a model or
    keyword sought them out as likely critical (``sought``): most of those are tweets the model
    already scores critical, so on them every threshold looks more precise than it is on
    traffic, and it comes out too low. All rows when none of the others is critical.
    ``"all"``: every row (the rule before the dev rows carried ``sought``)."""
    every = list(range(len(rows)))
    drawn = [i for i in every if not rows[i].sought]
    if which == "all" or not any(rows[i].urgency is Urgency.CRITICAL for i in drawn):
        return every
    return drawn


def f_beta(precision: float, recall: float, beta: float) -> float:
    if precision == 0 and recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


class WeightedCrossEntropy:
    """Class-weighted cross-entropy where each row also carries a weight of its own.

    ``sum(r_i * w_{y_i} * loss_i) / sum(r_i * w_{y_i})``: with every row weight 1 this is
    exactly torch's class-weighted mean, so a row weight only shifts the balance between rows."""

    def __init__(self, class_weight: torch.Tensor, label_smoothing: float) -> None:
        self.class_weight = class_weight
        self.loss = torch.nn.CrossEntropyLoss(
            weight=class_weight, label_smoothing=label_smoothing, reduction="none"
        )

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor
    ) -> torch.Tensor:
        weights = row_weights * self.class_weight[labels]
        return (self.loss(logits, labels) * row_weights).sum() / weights.sum()


class Objective:
    """The loss of a batch: class-weighted cross-entropy of both heads on its labeled rows (the
    first ``len(rows)`` indices), blended with distillation when there is a teacher."""

    def __init__(
        self,
        rows: list[LabeledTweet],
        options: TrainOptions,
        distil: Distillation | None,
        row_weights: list[float] | None = None,
    ) -> None:
        self.labeled = len(rows)
        self.distil = distil
        self.departments = torch.tensor([list(Department).index(r.department) for r in rows])
        self.urgencies = torch.tensor([list(Urgency).index(r.urgency) for r in rows])
        self.row_weights = torch.tensor(row_weights or [1.0] * len(rows))
        urgency_weights = class_weights(self.urgencies, len(Urgency))
        urgency_weights[list(Urgency).index(Urgency.CRITICAL)] *= options.critical_weight
        self.department_loss = WeightedCrossEntropy(
            class_weights(self.departments, len(Department)), options.label_smoothing
        )
        self.urgency_loss = WeightedCrossEntropy(urgency_weights, options.label_smoothing)

    def hard(
        self, batch: list[int], departments: torch.Tensor, urgencies: torch.Tensor
    ) -> torch.Tensor:
        """The labels' loss over the labeled rows of ``batch`` (0 when there are none)."""
        positions = [p for p, i in enumerate(batch) if i < self.labeled]
        if len(positions) < len(batch):
            departments, urgencies = departments[positions], urgencies[positions]
        if not positions:
            return departments.sum() * 0.0
        labeled = [batch[p] for p in positions]
        weights = self.row_weights[labeled]
        return self.department_loss(
            departments, self.departments[labeled], weights
        ) + self.urgency_loss(urgencies, self.urgencies[labeled], weights)

    def __call__(
        self, batch: list[int], departments: torch.Tensor, urgencies: torch.Tensor
    ) -> torch.Tensor:
        hard = self.hard(batch, departments, urgencies)
        d = self.distil
        if d is None:
            return hard
        soft = distillation_loss(
            departments, d.department[batch], d.temperature
        ) + distillation_loss(urgencies, d.urgency[batch], d.temperature)
        share = sum(i < self.labeled for i in batch) / len(batch)
        return blended_loss(hard, soft, share, d.alpha)


class Trainer:
    def __init__(self, backbone: Path, options: TrainOptions) -> None:
        self.options = options
        self.encoder = Encoder(backbone, options.layers)
        if options.lora_rank:
            from peft import LoraConfig, get_peft_model

            self.encoder.transformer = get_peft_model(
                self.encoder.transformer,
                LoraConfig(
                    r=options.lora_rank,
                    lora_alpha=options.lora_alpha,
                    lora_dropout=options.lora_dropout,
                    target_modules=LORA_TARGETS,
                ),
            )
        self.heads = Heads(self.encoder.dim)

    def start_from(self, teacher: Path) -> None:
        """Begin with what the teacher tuned (its adapters, or its encoder weights, as the
        student is trained) for the layers the student keeps, and its heads."""
        tuned = teacher / ENCODER_FILE
        if self.options.lora_rank and tuned.is_file():
            raise ValueError(f"{teacher} tuned every encoder weight: give --lora-rank 0 to start "
                             "a student from them")  # fmt: skip
        if not self.options.lora_rank and not tuned.is_file():
            raise ValueError(f"{teacher} has LoRA adapters: leave --lora-rank to start a "
                             "student from them")  # fmt: skip
        if self.options.lora_rank:
            from peft import set_peft_model_state_dict

            adapter = load_file(str(teacher / "adapter" / "adapter_model.safetensors"))
            depth = len(self.encoder.transformer.base_model.model.encoder.layer)
            set_peft_model_state_dict(self.encoder.transformer, kept_layers(adapter, depth))
        else:
            depth = len(self.encoder.transformer.encoder.layer)
            weights = kept_layers(load_file(str(tuned)), depth)
            self.encoder.transformer.load_state_dict(weights)  # cast to float32 as it loads
        self.heads.load_state_dict(load_file(str(teacher / "heads.safetensors")))

    def trainable(self) -> dict[str, torch.Tensor]:
        named = {f"encoder.{n}": p for n, p in self.encoder.named_parameters() if p.requires_grad}
        named.update({f"heads.{n}": p for n, p in self.heads.named_parameters()})
        return named

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainable().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, parameter in self.trainable().items():
                parameter.copy_(state[name])

    def fit(
        self,
        rows: list[LabeledTweet],
        on_epoch: Callable[[int], None],
        distil: Distillation | None = None,
        row_weights: list[float] | None = None,
    ) -> None:
        """Train for the configured epochs, calling ``on_epoch(epoch)`` after each."""
        from transformers import get_linear_schedule_with_warmup

        o = self.options
        rng = random.Random(o.seed)
        objective = Objective(rows, o, distil, row_weights)
        texts = [r.text for r in rows] + (distil.extra if distil else [])
        tuned = [p for p in self.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            [
                {"params": tuned, "lr": o.lr},
                {"params": list(self.heads.parameters()), "lr": o.head_lr},
            ],
            weight_decay=o.weight_decay,
        )
        steps = o.epochs * -(-len(texts) // o.batch_size)
        schedule = get_linear_schedule_with_warmup(optimizer, int(o.warmup * steps), steps)
        lengths = [len(t) for t in texts]
        for epoch in range(1, o.epochs + 1):
            self.encoder.train()
            self.heads.train()
            total = 0.0
            for batch in batches(len(texts), o.batch_size, rng, lengths):
                tokens = self.encoder.tokenize([texts[i] for i in batch], o.max_length)
                encoded = self.encoder(tokens["input_ids"], tokens["attention_mask"])
                loss = objective(batch, *self.heads(encoded))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.trainable().values(), 1.0)
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
            log.info("epoch %d: training loss %.4f", epoch, total / len(texts))
            on_epoch(epoch)

    @torch.inference_mode()
    def logits(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.encoder.eval()
        self.heads.eval()
        return self.heads(embed(self.encoder, texts, self.options.max_length))

    def save(self, out_dir: Path) -> None:
        """Write the heads and the encoder in the form this recipe tuned it (its own weights,
        or a LoRA adapter), and remove the other form left by an earlier run into the same
        folder: loading prefers the encoder's own weights, which would serve the new heads on
        the old encoder."""
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.options.lora_rank:
            (out_dir / ENCODER_FILE).unlink(missing_ok=True)
        else:
            shutil.rmtree(out_dir / "adapter", ignore_errors=True)
        save_file(
            {k: v.contiguous() for k, v in self.heads.state_dict().items()},
            str(out_dir / "heads.safetensors"),
        )
        if not self.options.lora_rank:  # float16: half the size; loading casts back to float32
            weights = self.encoder.transformer.state_dict()
            save_file({k: half(v) for k, v in weights.items()}, str(out_dir / ENCODER_FILE))
            return
        self.encoder.transformer.save_pretrained(str(out_dir / "adapter"))
        config_path = out_dir / "adapter" / "adapter_config.json"
        config = json.loads(config_path.read_text())
        # The backbone is given at load time; a machine-specific path here would only mislead.
        config["base_model_name_or_path"] = None
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (out_dir / "adapter" / "README.md").unlink(missing_ok=True)  # peft's blank template


def kept_layers(weights: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The weights outside the encoder's layers and those of its first ``depth`` layers."""
    layer = re.compile(r"\.layer\.(\d+)\.")
    return {
        name: tensor
        for name, tensor in weights.items()
        if (found := layer.search(name)) is None or int(found.group(1)) < depth
    }


def half(weights: torch.Tensor) -> torch.Tensor:
    """Float weights in float16 (loading casts them back); other tensors as they are."""
    return (weights.half() if weights.is_floating_point() else weights).contiguous()


def labels_from_logits(
    department_logits: torch.Tensor, urgency_logits: torch.Tensor, calibration: Calibration
) -> list[tuple[str, str]]:
    departments, urgencies = list(Department), list(Urgency)
    urgency_probs = torch.softmax(urgency_logits / calibration.urgency_temperature, dim=-1)
    return [
        (
            departments[int(d)].value,
            urgencies[decide_urgency(u, urgencies, calibration.critical_threshold)].value,
        )
        for d, u in zip(department_logits.argmax(-1), urgency_probs, strict=True)
    ]


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    # Float reductions depend on the thread count: fix it so a rerun gives the same weights.
    torch.set_num_threads(threads)


def artifact_version(options: TrainOptions) -> str:
    """``options.version`` when given; else the full backbone is minilm-lora-v1, a shallower
    student says its depth, a distilled one says so (minilm4-distil-v1), one with every encoder
    weight tuned says full (minilm-full-v1)."""
    if options.version:
        return options.version
    depth = "" if options.layers is None else str(options.layers)
    recipe = "distil" if options.teacher else "lora" if options.lora_rank else "full"
    if not depth and recipe == "lora":
        return ARTIFACT_VERSION
    return f"minilm{depth}-{recipe}-v1"


def teacher_logits(
    artifact: Path, texts: list[str], options: TrainOptions
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The teacher's raw department and urgency logits for ``texts``, and its card.

    Loaded with the student's token limit and threads; its random draws (head initialization
    before the weights load) are kept off the training's generator."""
    with torch.random.fork_rng(devices=[]):
        teacher = TweetClassifier.load(
            artifact, max_length=options.max_length, threads=options.threads
        )
    with torch.inference_mode():
        departments, urgencies = teacher.heads(embed(teacher.encoder, texts, options.max_length))
    # Clones made outside inference mode, so that autograd may save them for the backward pass.
    return departments.clone(), urgencies.clone(), teacher.card


def prepare_distillation(
    rows: list[LabeledTweet], options: TrainOptions
) -> tuple[Distillation | None, dict | None]:
    """The teacher's targets for the training rows and the unlabeled texts, and what the card
    records about them (None, None without a teacher)."""
    if options.teacher is None:
        return None, None
    unlabeled = read_tweets(Path(options.unlabeled)) if options.unlabeled else []
    if options.licences == "commercial":
        unlabeled = [t for t in unlabeled if commercial_use(licence_of(t))]
    extra = [t.text for t in unlabeled]
    started = time.monotonic()
    departments, urgencies, card = teacher_logits(
        Path(options.teacher), [r.text for r in rows] + extra, options
    )
    log.info("teacher logits for %d texts in %.0f s", len(departments), time.monotonic() - started)
    distil = Distillation(
        departments, urgencies, extra, options.distil_alpha, options.distil_temperature
    )
    record = {
        "teacher": card["version"],
        "teacher_trained_at": card.get("trained_at"),
        "alpha": options.distil_alpha,
        "temperature": options.distil_temperature,
        "unlabeled_rows": len(extra),
        "unlabeled_sha256": _text_sha256(extra) if extra else None,
        # what the student learnt from besides its labeled rows, for its licence: the
        # unlabeled texts' licences, and those of the rows the teacher learnt from
        "licences": sorted(
            {licence_of(t) for t in unlabeled}
            | set(card.get("licence", {}).get("training_rows_by_licence", {}))
        ),
    }
    return distil, record


def _text_sha256(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TrainingData:
    """What a training run reads: the folders' training rows (filtered by licence), their
    weights, the selection folder's dev rows, and every folder's dev and test rows to report."""

    rows: list[LabeledTweet]
    weights: list[float]
    selection: DataFolder
    dev: list[LabeledTweet]
    described: dict
    reported: dict[str, dict[str, list[LabeledTweet]]]
    selection_name: str  # the selection folder's name in the card (its path if another has it)

    @classmethod
    def read(cls, folders: list[DataFolder], options: TrainOptions) -> TrainingData:
        if not folders:
            raise ValueError("no data folder to train on")
        keep = commercial_use if options.licences == "commercial" else (lambda _licence: True)
        rows: list[LabeledTweet] = []
        weights: list[float] = []
        overriding: list[bool] = []
        described: dict = {}
        reported: dict[str, dict[str, list[LabeledTweet]]] = {}
        keys: dict[int, str] = {}  # each folder's name in the card: its own, or its path if taken
        for index, folder in enumerate(folders):
            key = keys[index] = folder.name if folder.name not in described else str(folder.path)
            splits = {}
            for split in ("train", "dev", "test"):
                path = folder.split(split)
                if path.is_file():
                    every = load_labeled(path)
                    splits[split] = [r for r in every if keep(r.licence)]
                    if split == "train" and every and not splits[split]:
                        log.warning("%s: none of its %d training rows has a licence that allows "
                                    "commercial use; it adds nothing to the model",
                                    folder.path, len(every))  # fmt: skip
            if "train" not in splits:
                raise ValueError(f"{folder.path}: no train.jsonl")
            rows += splits["train"]
            weights += [folder.weight] * len(splits["train"])
            overriding += [folder.overrides] * len(splits["train"])
            described[key] = {
                "path": str(folder.path),
                "weight": folder.weight,
                **({"overrides": True} if folder.overrides else {}),
                **{split: _describe(folder.split(split), part) for split, part in splits.items()},
            }
            reported[key] = {s: part for s, part in splits.items() if s != "train" and part}
        if not rows:
            raise ValueError(
                "no training row is left to train on (--licences commercial keeps "
                "only rows whose licence allows commercial use)"
            )
        with_dev = [i for i in range(len(folders)) if reported[keys[i]].get("dev")]
        if not with_dev:
            raise ValueError("no data folder has a dev.jsonl to select the epoch on")
        selection = with_dev[-1]
        if selection != len(folders) - 1:  # the last folder's dev split was meant to select
            log.warning("%s has no dev rows (none, or none its licence allows): %s selects",
                        folders[-1].path, folders[selection].path)  # fmt: skip
        rows, weights = _overridden(rows, weights, overriding)
        limit = options.limit
        return cls(
            rows[:limit], weights[:limit], folders[selection], reported[keys[selection]]["dev"],
            described, reported, keys[selection],
        )  # fmt: skip


def spdx_id(family: str) -> str:
    """A licence family's SPDX identifier ("CC BY-NC-SA 4.0" -> "CC-BY-NC-SA-4.0"); a name
    with no version is not one SPDX knows, and becomes a LicenseRef."""
    name = spdx_name(family)
    return name.upper() if any(c.isdigit() for c in name) else f"LicenseRef-{name}"


def training_licence(rows: list[LabeledTweet], also: Sequence[str] = ()) -> dict:
    """The licence that follows from the training rows and ``also`` (the licences of what a
    distilled student learnt from besides them): the most restrictive wins."""
    families = Counter(licence_family(r.licence) for r in rows)
    every_family = set(families) | {licence_family(licence) for licence in also}
    commercial = all(commercial_use(r.licence) for r in rows) and all(map(commercial_use, also))
    non_commercial = any(f.startswith("CC BY-NC") for f in every_family)
    unknown = "unknown" in every_family
    if commercial:
        terms = (
            "Commercial use allowed. Trained on tweets written for the project (Apache-2.0) and "
            "permissively licensed public tweets (MIT, Apache-2.0, CC0): keep their attribution "
            "(data/labeled/real/README.md) and the X terms for tweet content."
        )
        spdx = "Apache-2.0"
    else:
        named = sorted(f for f in every_family if f != "unknown" and not commercial_use(f))
        terms = (
            ("Non-commercial use only" if non_commercial else "Not cleared for commercial use")
            + (
                f". Trained on public tweets under {' and '.join(named)}"
                if named
                else ". Trained on tweets"
            )  # fmt: skip
            + (
                " and tweets whose source states no licence"
                if unknown and named
                else " whose source states no licence"
                if unknown
                else ""
            )  # fmt: skip
            + (
                ": attribution, non-commercial, share-alike (data/labeled/real/README.md)"
                if "CC BY-NC-SA 4.0" in named
                else ""
            )  # fmt: skip
            + ". For commercial use choose the commercial artifact (classify.artifact)."
        )
        spdx = " AND ".join(
            [spdx_id(f) for f in named] + (["LicenseRef-unknown"] if unknown else [])
        )
    return {
        "spdx": spdx,
        "commercial_use": commercial,
        "non_commercial_sources": non_commercial,
        "terms": terms,
        "training_rows_by_licence": dict(sorted(families.items())),
    }


def train(
    data: list[DataFolder] | None = None,
    out_dir: Path = DEFAULT_ARTIFACT,
    backbone: Path | None = None,
    options: TrainOptions = TrainOptions(),
) -> dict:
    """Train on every folder's train.jsonl, select and calibrate on the selection folder's
    dev.jsonl, report every dev and test split; save the artifact and its card."""
    started = time.monotonic()
    seed_everything(options.seed, options.threads)
    data = TrainingData.read(data or default_data(), options)
    train_rows, dev_rows = data.rows, data.dev
    backbone = Path(backbone or default_backbone())
    distil, distillation = prepare_distillation(train_rows, options)
    trainer = Trainer(backbone, options)
    if options.teacher and options.init_from_teacher:
        trainer.start_from(Path(options.teacher))
    dev_texts = [r.text for r in dev_rows]
    best: dict = {"score": -1.0}

    def select(epoch: int) -> None:
        scores = report(dev_rows, labels_from_logits(*trainer.logits(dev_texts), Calibration()))
        score = selection_score(scores)
        log.info("epoch %d: %s dev %s", epoch, data.selection_name, json.dumps(headline(scores)))
        if score > best["score"]:
            best.update(score=score, epoch=epoch, state=trainer.snapshot())

    extra = len(distil.extra) if distil else 0
    log.info(
        "training on %d tweets (+%d unlabeled), selecting on %d of %s",
        len(train_rows),
        extra,
        len(dev_rows),
        data.selection_name,
    )
    trainer.fit(train_rows, select, distil, data.weights)
    trainer.restore(best["state"])
    calibration = calibrate(trainer, dev_rows)
    metrics = {
        name: {split: figures(trainer, part, calibration) for split, part in splits.items()}
        for name, splits in data.reported.items()
    }
    card = {
        "version": artifact_version(options),
        "kind": f"{'LoRA-tuned' if options.lora_rank else 'fully tuned'} encoder, mean pooling, "
        "linear department and urgency heads",
        "backbone": f"{INSTALLED_BACKBONE}==0.1.0 (sentence-transformers/all-MiniLM-L6-v2)"
        if backbone == default_backbone()
        else str(backbone.resolve()),
        "departments": [d.value for d in Department],
        "urgencies": [u.value for u in Urgency],
        "languages": ["en"],
        "text_preparation": "@handles -> @user, links -> http",
        "max_length": options.max_length,
        "options": asdict(options),
        **({"distillation": distillation} if distillation else {}),
        "licence": training_licence(train_rows, (distillation or {}).get("licences", ())),
        "selected_on": f"{data.selection_name}/dev",
        "selected_epoch": best["epoch"],
        "calibration": asdict(calibration),
        "data": data.described,
        "metrics": metrics,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(time.monotonic() - started, 1),
    }
    trainer.save(out_dir)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    if options.lexical:
        card = attach_lexical(out_dir, data, options, backbone)
    return card


def attach_lexical(
    artifact: Path, data: TrainingData, options: TrainOptions, backbone: Path | None = None
) -> dict:
    """Fit the lexical model (lexical.py) on the training rows, choose its blend with the
    artifact's encoder on the selection dev split, refit the critical threshold on the blend,
    and rewrite the artifact's card with the blend and every split's figures under it.
    ``backbone``: the one the encoder was tuned from (None: the one its card names)."""
    started = time.monotonic()
    card = json.loads((artifact / "card.json").read_text())
    model = TweetClassifier.load(artifact, backbone=backbone, threads=options.threads)
    texts = [prepare_text(r.text) for r in data.rows]
    log.info("fitting the lexical model on %d tweets", len(texts))
    model.lexical = LexicalModel.fit(texts, training_labels(data.rows), data.weights, options.seed)
    model.blend, threshold = fit_blend(model, data.dev)
    model.calibration = replace(
        model.calibration, critical_threshold=threshold, critical_threshold_rows=THRESHOLD_ROWS
    )
    model.lexical.save(artifact)
    lexical = card_section(model.blend, model.lexical)
    if data.described != card.get("data"):  # refitted on other rows (`classify blend`): say which
        lexical["data"] = data.described
    card.update(
        version=options.version or card["version"],
        lexical=lexical,
        calibration=asdict(model.calibration),
        metrics={
            name: {split: classifier_figures(model, part) for split, part in splits.items()}
            for name, splits in data.reported.items()
        },
        training_seconds=round(card.get("training_seconds", 0) + time.monotonic() - started, 1),
    )
    (artifact / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def fit_blend(
    model: TweetClassifier, dev_rows: list[LabeledTweet], rows: str = THRESHOLD_ROWS
) -> tuple[Blend, float]:
    """The blend and critical threshold dev chooses: the lexical temperatures that minimize its
    dev log-loss; the department weight with the best dev department accuracy; the urgency
    weight with the best dev urgency macro-F1, with the blend's temperature and the critical
    threshold (on ``threshold_rows(dev_rows, rows)``) refitted for each weight. Ties go to the
    smaller weight (0 is the encoder alone)."""
    assert model.lexical is not None
    fitted_on = threshold_rows(dev_rows, rows)
    dev_texts = [r.text for r in dev_rows]
    encoder_departments, encoder_urgencies = model.encoder_probabilities(dev_texts)
    lexical = model.lexical.logits([prepare_text(t) for t in dev_texts])
    gold = {
        "department": torch.tensor([list(Department).index(r.department) for r in dev_rows]),
        "urgency": torch.tensor([list(Urgency).index(r.urgency) for r in dev_rows]),
    }
    lexical_temperature = {
        label: fit_temperature(torch.from_numpy(lexical[label]), gold[label]) for label in gold
    }
    lexical_departments = softmax(lexical["department"], lexical_temperature["department"])
    lexical_urgencies = softmax(lexical["urgency"], lexical_temperature["urgency"])

    def calibrated(encoder: np.ndarray, lexical: np.ndarray, weight: float, label: str) -> float:
        mean = log_probabilities(blended(encoder, lexical, weight))
        return 1.0 if weight == 0 else fit_temperature(torch.from_numpy(mean), gold[label])

    def department_accuracy(weight: float) -> int:
        predicted = blended(encoder_departments, lexical_departments, weight).argmax(-1)
        return int((torch.from_numpy(predicted) == gold["department"]).sum())

    def urgency_choice(weight: float) -> tuple[float, float, float]:
        temperature = calibrated(encoder_urgencies, lexical_urgencies, weight, "urgency")
        probs = blended(encoder_urgencies, lexical_urgencies, weight, temperature)
        threshold = fit_critical_threshold(
            torch.from_numpy(probs[fitted_on]), [dev_rows[i].urgency for i in fitted_on]
        )
        urgencies = list(Urgency)
        predicted = [urgencies[decide_urgency(p, urgencies, threshold)].value for p in probs]
        names = [u.value for u in urgencies]
        score = macro_f1([r.urgency.value for r in dev_rows], predicted, names)
        return score, temperature, threshold

    department_weight = max(WEIGHTS, key=lambda w: (department_accuracy(w), -w))
    choices = {weight: urgency_choice(weight) for weight in WEIGHTS}
    urgency_weight = max(WEIGHTS, key=lambda w: (choices[w][0], -w))
    log.info(
        "blend chosen on dev: department weight %.1f, urgency weight %.1f",
        department_weight,
        urgency_weight,
    )
    _, urgency_temperature, threshold = choices[urgency_weight]
    blend = Blend(
        department_weight=department_weight,
        urgency_weight=urgency_weight,
        lexical_department_temperature=lexical_temperature["department"],
        lexical_urgency_temperature=lexical_temperature["urgency"],
        department_temperature=calibrated(
            encoder_departments, lexical_departments, department_weight, "department"
        ),
        urgency_temperature=urgency_temperature,
    )
    return blend, threshold


def classifier_figures(model: TweetClassifier, rows: list[LabeledTweet]) -> dict:
    """The report of ``rows`` by the classifier as it serves (blend included), with the
    department ECE."""
    predictions = model.predict([r.text for r in rows])
    labels = [(p.department.value, p.urgency.value) for p in predictions]
    ece = expected_calibration_error(
        [p.confidence for p in predictions],
        [p.department == r.department for p, r in zip(predictions, rows, strict=True)],
    )
    return report(rows, labels) | {"department_ece": ece}


def selection_score(scores: dict) -> float:
    """What picks the epoch on dev: department accuracy (what routing gets right) plus the
    urgency macro-F1 (which critical dominates when it is missed)."""
    return scores["department_accuracy"] + scores["urgency_macro_f1"]


def calibrate(trainer: Trainer, dev_rows: list[LabeledTweet]) -> Calibration:
    """Temperatures and the critical threshold, fitted on the selection dev split."""
    departments, urgencies = trainer.logits([r.text for r in dev_rows])
    department_labels = torch.tensor([list(Department).index(r.department) for r in dev_rows])
    urgency_labels = torch.tensor([list(Urgency).index(r.urgency) for r in dev_rows])
    urgency_temperature = fit_temperature(urgencies, urgency_labels)
    fitted_on = threshold_rows(dev_rows)
    probs = torch.softmax(urgencies[fitted_on] / urgency_temperature, dim=-1)
    return Calibration(
        department_temperature=fit_temperature(departments, department_labels),
        urgency_temperature=urgency_temperature,
        critical_threshold=fit_critical_threshold(probs, [dev_rows[i].urgency for i in fitted_on]),
        critical_threshold_rows=THRESHOLD_ROWS,
    )


def figures(trainer: Trainer, rows: list[LabeledTweet], calibration: Calibration) -> dict:
    """The report of ``rows`` under the final calibration, with the department ECE."""
    departments, urgencies = trainer.logits([r.text for r in rows])
    labels = labels_from_logits(departments, urgencies, calibration)
    ece = department_ece(departments, rows, calibration)
    return report(rows, labels) | {"department_ece": ece}


def department_ece(
    departments: torch.Tensor, rows: list[LabeledTweet], calibration: Calibration
) -> float:
    probs = torch.softmax(departments / calibration.department_temperature, dim=-1)
    confidence, predicted = probs.max(-1)
    gold = [list(Department).index(r.department) for r in rows]
    correct = [int(p) == g for p, g in zip(predicted.tolist(), gold, strict=True)]
    return expected_calibration_error(confidence.tolist(), correct)


def _overridden(
    rows: list[LabeledTweet], weights: list[float], overriding: list[bool]
) -> tuple[list[LabeledTweet], list[float]]:
    """Without the rows whose text a correction relabelled: a person's label replaces the
    dataset's (same text, case and spacing aside), it does not sit beside it."""
    corrected = {_same_text(r.text) for r, o in zip(rows, overriding, strict=True) if o}
    kept = [(r, w) for r, w, o in zip(rows, weights, overriding, strict=True)
            if o or _same_text(r.text) not in corrected]  # fmt: skip
    return [r for r, _ in kept], [w for _, w in kept]


def _same_text(text: str) -> str:
    return " ".join(text.lower().split())


def _describe(path: Path, rows: list[LabeledTweet]) -> dict:
    return {
        "rows": len(rows),
        "sha256": content_sha256(path),
        "departments": dict(sorted(Counter(r.department.value for r in rows).items())),
        "urgencies": dict(sorted(Counter(r.urgency.value for r in rows).items())),
    }
