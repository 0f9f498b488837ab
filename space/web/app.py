"""The web app: FastAPI routes (``/predict``, ``/healthz``, ``/readyz``, ``/info``), Gradio page at ``/``
(unless ``SPACE_UI=false``)."""

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
from gradio.routes import App as GradioApp  # noqa: E402

from space import __version__  # noqa: E402
from space.serving.admission import DEFAULT_WORKERS, Admission  # noqa: E402
from space.serving.explainer import Explainer  # noqa: E402
from space.serving.pipeline import Runtime  # noqa: E402
from space.settings import Settings  # noqa: E402
from space.web import explain_api, logs, metrics, routes  # noqa: E402
from space.web.door import AdmissionDoor  # noqa: E402
from space.web.errors import install_error_handlers  # noqa: E402
from space.web.security import install_security, secure_gradio, ui_credentials  # noqa: E402
from space.web.ui import THEME, build_ui  # noqa: E402

log = logging.getLogger(__name__)

MODEL_ROUTES = frozenset({"/predict", "/explain"})  # refused at the door while admission is full
UPLOAD_MAX_AGE_S = 600  # Gradio's copies of UI uploads are deleted after this long (and at shutdown)


def create_app(settings: Settings, on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    """Build the app; the model starts loading when the server starts, and ``/readyz`` turns 200 after."""
    runtime = Runtime(settings)

    def load_failed(message: str) -> None:
        log.error(message)
        if on_load_failure:
            on_load_failure(message)

    # Enough admission threads to fill a batch and decode the next one while it runs (they mostly wait
    # on the batcher, not the GIL). With one batch's worth, the model idled while the next batch was
    # decoded, and ran batches of one or two: OpenVINO bf16, 16 clients, 21.8 images/s against 26 here.
    workers = max(DEFAULT_WORKERS, 2 * settings.max_batch_size)
    admission = Admission(
        settings.max_in_flight,
        settings.request_timeout_s,
        workers=workers,
        queue_timeout_s=settings.queue_timeout_s,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.load_in_background(load_failed)
        yield
        admission.shutdown()

    app = FastAPI(
        title="vit-space",
        version=__version__,
        description="Image classification with a Vision Transformer, served in-process.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.admission = admission
    app.state.explainer = explainer = Explainer(runtime, admission)  # issue 17: /explain, page, MCP
    install_error_handlers(app)  # every error's HTTP answer, in one place
    sessions = install_security(app, settings)
    app.include_router(routes.router)
    app.include_router(explain_api.router)
    app.add_api_route("/metrics", metrics.metrics_endpoint(runtime), methods=["GET"], include_in_schema=False)
    # Every answer (401s and 503s included) gets a request id, a log line and a count.
    app.add_middleware(
        logs.RequestLogMiddleware, enabled=settings.request_log, on_done=metrics.observe_request
    )
    # Outermost: while every slot is taken, the model's routes are refused here, for almost no CPU.
    app.add_middleware(
        AdmissionDoor, admission=admission, routes=MODEL_ROUTES, on_refused=metrics.observe_refusal
    )
    if not settings.ui:  # API only: no page, no Gradio API, no MCP (the /predict ingress, programs)
        return app
    examples_dir = settings.examples_dir.resolve()
    # Gradio's queue is bounded too, so UI users cannot starve the API (they share the admission slots).
    # As many page events run at once as the API admits: they meet in the same batcher, so the page gets
    # the API's throughput (with Gradio's default of one at a time, each batch would hold one image).
    blocks = build_ui(runtime, admission, explainer).queue(
        max_size=settings.ui_queue_size,
        default_concurrency_limit=settings.ui_concurrency or settings.max_in_flight,
    )
    blocks.delete_cache = (UPLOAD_MAX_AGE_S, UPLOAD_MAX_AGE_S)  # UI uploads leave GRADIO_TEMP_DIR soon
    app = gr.mount_gradio_app(
        app,
        blocks,
        auth=ui_credentials(settings),
        path="/",
        theme=THEME,
        allowed_paths=[str(examples_dir)] if examples_dir.is_dir() else None,
        max_file_size=settings.max_upload_bytes,
        show_error=True,
        footer_links=["api"],
        mcp_server=settings.mcp,
    )
    gradio_app = next(r.app for r in app.routes if isinstance(getattr(r, "app", None), GradioApp))
    secure_gradio(gradio_app, blocks, sessions, settings)
    return app
