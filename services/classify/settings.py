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
    shadow: bool = Field(
        default=False,
        description="Label the raw tweets with a candidate model into switchboard.tweets.shadow "
        "(a consumer group of its own), routing nothing; `switchboard classify --shadow`",
    )
    shadow_artifact: str | None = Field(
        default=None, description="The candidate artifact a shadow classify serves"
    )

    @property
    def artifact(self) -> str | None:
        """The artifact this classify serves: the candidate in shadow, else classify.artifact."""
        return self.shadow_artifact if self.shadow else self.config.classify.artifact
