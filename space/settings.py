"""The one settings object: environment variables with the prefix ``SPACE_``, overridable by CLI flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from space.backends.registry import NAMES, PRECISIONS, summary

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
    model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="The model's name in the v2 protocol's routes (/v2/models/NAME); default: the last part "
        "of the model id (for a baked folder, of the id it was baked from) or of the folder.",
    )
    top_k: int = Field(5, ge=1, le=1000, description="How many classes to return by default.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(
        7860,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("SPACE_PORT", "PORT", "port"),
        description="TCP port (0: any free one, logged); PORT (Cloud Run and similar hosts) is honoured too.",
    )
    examples_dir: Path = Field(Path("examples"), description="Folder of example images shown in the UI.")
    max_upload_mb: float = Field(10.0, gt=0, le=1024, description="Largest accepted upload, in megabytes.")
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest accepted image, in pixels (guards against decompression bombs).",
    )
    threads: int | None = Field(
        None, ge=1, le=512, description="Threads per inference call (default: CPUs available, cgroup quota)."
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Log level."
    )

    # --- Reliability and security (issue 6): admission control, time limits, CORS, optional auth ---
    max_in_flight: int = Field(
        64,
        ge=1,
        le=4096,
        description="Images admitted at once (every route and the page; a request of N images takes N); "
        "more get 503 at once.",
    )
    max_images_per_request: int = Field(
        64,
        ge=1,
        le=4096,
        description="Most images in one request; more get 413 (default: 64, at most SPACE_MAX_IN_FLIGHT).",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest a prediction may take, queueing included; later -> 504."
    )
    queue_timeout_s: float = Field(
        2.0, gt=0, description="Longest an admitted prediction may wait to start; later -> 503 (shed)."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Longest an upload body may take to arrive; slower -> 408."
    )
    ui_concurrency: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="UI (Gradio queue) events run at once (default: max_in_flight, so the page's requests "
        "share batches as the API's do).",
    )
    ui_queue_size: int = Field(
        32, ge=1, le=10000, description="UI events that may wait in Gradio's queue; more are told to retry."
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Origins allowed cross-origin access (JSON list or comma-separated); none by default.",
    )
    api_token: SecretStr | None = Field(
        None,
        description="If set, every route but health, metrics and the login page needs "
        "'Authorization: Bearer <token>' or a UI login (any user name, the token as password).",
    )
    ui_auth: SecretStr | None = Field(
        None, description="If set ('user:password'), the UI asks for this login (instead of the token)."
    )
    ui: bool = Field(True, description="Serve the Gradio page and its API; false: API only (/predict).")

    @field_validator("ui_auth")
    @classmethod
    def _check_ui_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, sep, password = value.get_secret_value().partition(":")
            if not (user and sep and password):
                raise ValueError("must be 'user:password', both non-empty")
        return value

    @model_validator(mode="after")
    def _mcp_needs_ui(self) -> Settings:
        if self.mcp and not self.ui:
            raise ValueError("SPACE_MCP=true needs the UI (Gradio serves MCP): drop SPACE_UI=false or it")
        return self

    @model_validator(mode="after")
    def _requests_fit_admission(self) -> Settings:
        if "max_images_per_request" not in self.model_fields_set:  # the default follows a lower bound
            self.max_images_per_request = min(self.max_images_per_request, self.max_in_flight)
        if self.max_images_per_request > self.max_in_flight:
            raise ValueError(
                f"SPACE_MAX_IMAGES_PER_REQUEST={self.max_images_per_request} is more than "
                f"SPACE_MAX_IN_FLIGHT={self.max_in_flight}, so such a request could never be admitted: "
                "raise SPACE_MAX_IN_FLIGHT or lower SPACE_MAX_IMAGES_PER_REQUEST"
            )
        return self

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    # --- Observability and MCP (issue 7): log format, per-request log lines, Gradio's MCP server ---
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines as JSON, or text; auto: text in a terminal, JSON otherwise."
    )
    request_log: bool = Field(True, description="One log line per request (replaces uvicorn's access log).")
    mcp: bool = Field(False, description="Serve the classifier as an MCP tool at /gradio_api/mcp/.")

    # --- Performance (issue 5): inference backend, precision, batching across users, CPU allocation ---
    backend: Literal[("auto", *NAMES)] = Field(  # type: ignore[valid-type]
        "auto", description="Inference runtime; auto: what the bake step exported (else PyTorch fp32)."
    )
    precision: Literal[("auto", *PRECISIONS)] = Field(  # type: ignore[valid-type]
        "auto", description=f"Precision ({summary()}); auto: what the bake step exported."
    )
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Inference calls at once (default: the runtime's own, one per CPU or one batched).",
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Most images per backend call (batching).")
    max_batch_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="Longest a request waits for others to share its batch, in ms."
    )
    decode_threads: int | None = Field(
        None, ge=1, le=64, description="Images decoded and preprocessed at once (default: half the CPUs)."
    )

    # --- Explanations (issue 17): occlusion maps, bounded like predictions ---
    explain_grid: int = Field(
        7,
        ge=7,
        le=32,
        description="Explanation map: rows and columns of its cells; windows of 2x2 cells slide a cell at a "
        "time ((N-1)*(N-1)+1 forward passes).",
    )
    explain_concurrency: int = Field(
        1, ge=1, le=64, description="Explanations computed at once (API, UI, MCP); more get 503 at once."
    )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def env_name(field: str) -> str:
    """The environment variable that sets ``field`` (``model_revision`` -> ``SPACE_MODEL_REVISION``)."""
    return field if field.isupper() else f"{ENV_PREFIX}{field.upper()}"


SECRET_FIELDS = ("api_token", "ui_auth")


def describe_error(error: ValidationError) -> str:
    """One line per invalid setting, naming its environment variable, for start-up failures."""
    lines = []
    for item in error.errors():
        if not item["loc"]:  # a rule across settings: its input is all of them, secrets included
            lines.append(f"invalid settings: {item['msg']}")
            continue
        field = str(item["loc"][0])
        value = "<hidden>" if field in SECRET_FIELDS else item.get("input")  # never echo a secret
        lines.append(f"invalid setting {env_name(field)}={value!r}: {item['msg']}")
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with non-None ``overrides`` (CLI flags) taking precedence."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
