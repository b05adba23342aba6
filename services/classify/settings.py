"""Settings of the classify service (``SWITCHBOARD_*`` environment variables and the YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import Field, model_validator

from switchboard.classify.config import ClassifyFileConfig, known_artifact
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

    @model_validator(mode="after")
    def _shadow_has_a_candidate(self) -> Self:
        if self.shadow and not self.shadow_artifact:
            raise ValueError("SWITCHBOARD_SHADOW_ARTIFACT: a shadow classify needs the candidate")
        if self.shadow_artifact and not self.shadow:
            raise ValueError(
                "SWITCHBOARD_SHADOW_ARTIFACT: set without SWITCHBOARD_SHADOW=true, it is not served"
            )
        try:
            known_artifact(self.shadow_artifact)
        except ValueError as error:
            raise ValueError(f"SWITCHBOARD_SHADOW_ARTIFACT: {error}") from None
        return self

    @property
    def artifact(self) -> str | None:
        """The artifact this classify serves: the candidate in shadow, else classify.artifact."""
        return self.shadow_artifact if self.shadow else self.config.classify.artifact
