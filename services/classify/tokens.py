"""Tweets as the encoder's token ids, read with the backbone's own tokenizer file.

The ``tokenizers`` library runs the same ``tokenizer.json`` that transformers' fast tokenizer
wraps, without importing torch and transformers: a classify that serves the int8 ONNX model
built ahead of time needs only this, ONNX Runtime and the lexical model, and starts without
loading either (docs/performance.md). Training and export use the same ids (network.py), so
there is one tokenization, whatever runs the encoder.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

_MENTION = re.compile(r"@\w{1,15}")
_URL = re.compile(r"https?://\S+")


def prepare_text(text: str) -> str:
    """Mask @handles and links: the department follows what is said, not which handle is named.

    Customers ignore handle segmentation (a complaint to @BrandDeals, an investor on
    @BrandHelp), so a model that learnt handle names would route by handle, which is exactly
    what Switchboard exists to avoid.
    """
    return _URL.sub("http", _MENTION.sub("@user", text))


class Tokens:
    """Token ids of prepared texts, truncated to a length, and padded batches of them."""

    def __init__(self, backbone: Path) -> None:
        self._file = backbone / "tokenizer.json"
        special = json.loads((backbone / "special_tokens_map.json").read_text())
        pad = special["pad_token"]
        self._by_length: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()
        self.pad_token_id: int = self._truncating(512).token_to_id(
            pad["content"] if isinstance(pad, dict) else pad
        )

    def _truncating(self, max_length: int) -> Tokenizer:
        """A tokenizer that truncates at ``max_length`` (special tokens included), never pads:
        one per length, since truncation is a setting of the tokenizer, not of a call."""
        with self._lock:
            if max_length not in self._by_length:
                tokenizer = Tokenizer.from_file(str(self._file))
                tokenizer.no_padding()
                tokenizer.enable_truncation(max_length)
                self._by_length[max_length] = tokenizer
            return self._by_length[max_length]

    def token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Each text's token ids, unpadded (``pad`` makes a batch of them)."""
        encodings = self._truncating(max_length).encode_batch([prepare_text(t) for t in texts])
        return [encoding.ids for encoding in encodings]

    def pad(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        """Token ids and attention mask of ``rows``, right-padded to the longest of them."""
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
