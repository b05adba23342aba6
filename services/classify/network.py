"""The encoder and its heads as torch modules: training, export to ONNX, the torch runtime.

Only these need torch and transformers; serving the int8 ONNX model does not (model.py loads
this module when something asks for the network).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even by accident

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from switchboard.classify.model import ENCODER_FILE  # noqa: E402
from switchboard.classify.tokens import Tokens  # noqa: E402
from switchboard.shared.labels import Department, Urgency  # noqa: E402

hf_logging.disable_progress_bar()


class Encoder(torch.nn.Module):
    """Mean-pooled token states of a Hugging Face encoder (as all-MiniLM-L6-v2 was trained)."""

    def __init__(
        self, backbone: Path, layers: int | None = None, tokens: Tokens | None = None
    ) -> None:
        super().__init__()
        self.tokens = tokens or Tokens(backbone)
        self.transformer = AutoModel.from_pretrained(str(backbone))
        self.dim: int = self.transformer.config.hidden_size
        if layers is not None:  # a shallower student: the backbone's first ``layers`` layers
            kept = self.transformer.encoder.layer[:layers]
            self.transformer.encoder.layer = torch.nn.ModuleList(kept)
            self.transformer.config.num_hidden_layers = len(kept)

    def tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        """The texts' token ids and attention mask, padded, as torch tensors."""
        batch = self.pad(self.token_ids(texts, max_length))
        return {name: torch.from_numpy(array) for name, array in batch.items()}

    def token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        return self.tokens.token_ids(texts, max_length)

    def pad(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        return self.tokens.pad(rows)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Heads(torch.nn.Module):
    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = torch.nn.Dropout(dropout)
        self.department = torch.nn.Linear(dim, len(Department))
        self.urgency = torch.nn.Linear(dim, len(Urgency))

    def forward(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.dropout(encoded)
        return self.department(encoded), self.urgency(encoded)


def load_network(
    artifact: Path, card: dict, backbone: Path, tokens: Tokens | None = None
) -> tuple[Encoder, Heads]:
    """The artifact's encoder (its LoRA adapter merged into the backbone's weights, so inference
    costs what the plain encoder costs, or its own tuned weights) and heads, in eval mode;
    ``tokens``: the caller's."""
    encoder = Encoder(backbone, card.get("options", {}).get("layers"), tokens)
    if (artifact / ENCODER_FILE).is_file():
        encoder.transformer.load_state_dict(load_file(str(artifact / ENCODER_FILE)))
    elif (artifact / "adapter").is_dir():
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(encoder.transformer, str(artifact / "adapter"))
        encoder.transformer = tuned.merge_and_unload()
    heads = Heads(encoder.dim)
    heads.load_state_dict(load_file(str(artifact / "heads.safetensors")))
    return encoder.eval(), heads.eval()
