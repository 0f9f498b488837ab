"""The one settings object: environment variables with the prefix ``SPACE_``, overridable by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "google/vit-base-patch16-224"
ENV_PREFIX = "SPACE_"


class Settings(BaseSettings):
    """Everything the app can be told; every field is also ``SPACE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        validate_by_name=True,
        validate_by_alias=True,
        protected_namespaces=(),
    )

    model: str = Field(
        DEFAULT_MODEL, description="Hub model id (read from the local cache) or a local folder."
    )
    model_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the model.")
    top_k: int = Field(5, ge=1, le=1000, description="How many classes to return by default.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(
        7860,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("SPACE_PORT", "PORT", "port"),
        description="TCP port; PORT (Cloud Run and similar hosts) is honoured too.",
    )
    examples_dir: Path = Field(Path("examples"), description="Folder of example images shown in the UI.")
    max_upload_mb: float = Field(10.0, gt=0, le=1024, description="Largest accepted upload, in megabytes.")
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest accepted image, in pixels (guards against decompression bombs).",
    )
    threads: int | None = Field(
        None, ge=1, le=512, description="Inference threads (default: CPUs available)."
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Log level."
    )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def env_name(field: str) -> str:
    """The environment variable that sets ``field`` (``model_revision`` -> ``SPACE_MODEL_REVISION``)."""
    return field if field.isupper() else f"{ENV_PREFIX}{field.upper()}"


def describe_error(error: ValidationError) -> str:
    """One line per invalid setting, naming its environment variable, for start-up failures."""
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        value = item.get("input")
        lines.append(f"invalid setting {env_name(field)}={value!r}: {item['msg']}")
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with non-None ``overrides`` (CLI flags) taking precedence."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
