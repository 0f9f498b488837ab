"""The web app: one classification service behind thin front doors: the HF contract (``/predict``,
``/explain``), the Open Inference Protocol (``/v2``), health and info, and the Gradio page at ``/``
(unless ``SPACE_UI=false``), which also serves MCP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from space import __version__
from space.serving.service import ClassificationService
from space.settings import Settings
from space.web import explain_api, logs, metrics, routes, v2
from space.web.bodies import BodyLimits
from space.web.door import AdmissionDoor
from space.web.errors import install_error_handlers
from space.web.security import GradioSessions, install_security, secure_gradio, ui_credentials

log = logging.getLogger(__name__)


def model_route(path: str) -> str | None:
    """The template of a route that runs the model (refused at the door while admission is full)."""
    if path in ("/predict", "/explain"):
        return path
    return v2.INFER_ROUTE if v2.is_infer_path(path) else None


UPLOAD_MAX_AGE_S = 600  # Gradio's copies of UI uploads are deleted after this long (and at shutdown)
QUEUE_POLL_S = 0.02  # how often Gradio's queue looks for page events to start (its default: 0.001)
PROGRESS_POLL_S = 0.05  # how often it sends progress (its default: 0.01)


def create_app(settings: Settings, on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    """Build the app; the model starts loading when the server starts, and ``/readyz`` turns 200 after.

    The model folder and the runtime choice are worked out here, once: a missing model or an unbaked
    runtime raises ``ModelUnavailable`` with one line that says how to fix it.
    """
    service = ClassificationService(settings)
    service.resolve()

    def load_failed(message: str) -> None:
        log.error(message)
        if on_load_failure:
            on_load_failure(message)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.load_in_background(load_failed)
        yield
        service.close()

    app = FastAPI(
        title="vit-space",
        version=__version__,
        description="Image classification with a Vision Transformer, served in-process.",
        lifespan=lifespan,
    )
    app.state.service = service  # what the routes are handed (space/web/deps.py)
    app.state.body_limits = BodyLimits.of(settings)
    install_error_handlers(app)  # every error's HTTP answer, in one place
    sessions = install_security(app, settings)
    app.include_router(routes.router)
    app.include_router(explain_api.router)
    app.include_router(v2.router)
    app.add_api_route("/metrics", metrics.metrics_endpoint(service), methods=["GET"], include_in_schema=False)
    # Every answer (401s and 503s included) gets a request id, a log line and a count.
    app.add_middleware(
        logs.RequestLogMiddleware, enabled=settings.request_log, on_done=metrics.observe_request
    )
    # Outermost: while every slot is taken, the model's routes are refused here, for almost no CPU.
    app.add_middleware(
        AdmissionDoor,
        admission=service.admission,
        model_route=model_route,
        on_refused=metrics.observe_refusal,
    )
    if not settings.ui:  # API only: no page, no Gradio API, no MCP, and gradio is never imported
        return app
    return mount_page(app, service, settings, sessions)


def mount_page(
    app: FastAPI, service: ClassificationService, settings: Settings, sessions: GradioSessions
) -> FastAPI:
    """The Gradio page at ``/`` (and its API and MCP), on the same service and admission slots."""
    import gradio as gr
    from gradio.routes import App as GradioApp

    from space.web.ui import THEME, build_ui

    examples_dir = settings.examples_dir.resolve()
    # Gradio's queue is bounded too, so page users cannot starve the API (they share the admission slots).
    # As many page events run at once as the API admits: they meet in the same batcher, so the page gets
    # the API's throughput (with Gradio's default of one at a time, each batch would hold one image).
    blocks = build_ui(service).queue(
        max_size=settings.ui_queue_size,
        default_concurrency_limit=settings.ui_concurrency or settings.max_in_flight,
    )
    blocks.delete_cache = (UPLOAD_MAX_AGE_S, UPLOAD_MAX_AGE_S)  # UI uploads leave GRADIO_TEMP_DIR soon
    # Gradio's queue checks for work every millisecond (and for progress every ten), busy or idle: a
    # thousand wake-ups a second of the event loop that serves every request, a few percent of a core on
    # an idle server. A few milliseconds is still far below a prediction.
    blocks._queue.sleep_when_free = QUEUE_POLL_S
    blocks._queue.progress_update_sleep_when_free = PROGRESS_POLL_S
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
