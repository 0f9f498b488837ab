"""The web app: FastAPI routes (``/predict``, ``/healthz``, ``/readyz``, ``/info``), Gradio page at ``/``."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

# Offline first: set before gradio and huggingface_hub are imported, unless the operator chose otherwise.
for _name, _value in {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(_name, _value)

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from space import __version__, api  # noqa: E402
from space.runtime import Runtime  # noqa: E402
from space.settings import Settings  # noqa: E402
from space.ui import THEME, build_ui  # noqa: E402

log = logging.getLogger(__name__)


def create_app(settings: Settings, on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    """Build the app; the model starts loading when the server starts, and ``/readyz`` turns 200 after."""
    runtime = Runtime(settings)

    def load_failed(message: str) -> None:
        log.error(message)
        if on_load_failure:
            on_load_failure(message)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.load_in_background(load_failed)
        yield

    app = FastAPI(
        title="vit-space",
        version=__version__,
        description="Image classification with a Vision Transformer, served in-process.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    api.install_error_handlers(app)
    app.include_router(api.router)
    examples_dir = settings.examples_dir.resolve()
    return gr.mount_gradio_app(
        app,
        build_ui(runtime),
        path="/",
        theme=THEME,
        allowed_paths=[str(examples_dir)] if examples_dir.is_dir() else None,
        max_file_size=settings.max_upload_bytes,
        show_error=True,
        footer_links=["api"],
    )
