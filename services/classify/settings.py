"""Settings of the classify service (``SWITCHBOARD_*`` environment variables and the YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from switchboard.classify.config import ClassifyFileConfig
from switchboard.shared.settings import ServiceSettings


class ClassifySettings(ServiceSettings):
    service: ClassVar[str] = "classify"
    default_http_port: ClassVar[int] = 8082

    config: ClassifyFileConfig  # type: ignore[assignment]  # the shared sections and classify's
    onnx_dir: Path | None = Field(
        default=None,
        description="Where the int8 ONNX model built from the artifact is read from (and "
        "written to when missing); the image builds it there (`switchboard classify build-onnx`) "
        "so that a pod does not export and quantize the model at every start. Unset: the temp "
        "folder",
    )
