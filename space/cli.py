"""Command line: ``python -m space serve | predict | ...``; every setting is a flag too, and flags win."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from space.errors import ModelUnavailable, UserError
from space.settings import Settings, describe_error, env_name, load_settings

SERVE_FIELDS = tuple(Settings.model_fields)
PREDICT_FIELDS = ("model", "model_revision", "top_k", "threads", "max_upload_mb", "max_pixels")
PREDICT_FIELDS += ("log_level", "log_format", "backend", "precision")
FLAG_NAMES = {"model_revision": "revision"}  # shorter flags where the field name is long
# Offline first: set before gradio, huggingface_hub or transformers are imported (they read these at import
# time), unless the operator chose otherwise.
OFFLINE = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def add_setting_flags(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    """One flag per setting, documented with its description, environment variable and default."""
    for name in fields:
        field = Settings.model_fields[name]
        flag = "--" + FLAG_NAMES.get(name, name).replace("_", "-")
        env = "SPACE_PORT or PORT" if name == "port" else env_name(name)
        parser.add_argument(
            flag,
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description} (env {env}; default: {field.default})",
        )


def settings_from(args: argparse.Namespace, fields: Sequence[str]) -> Settings:
    return load_settings(**{name: getattr(args, name) for name in fields})


def serve(args: argparse.Namespace) -> int:
    """Start the web app; exits non-zero with one clear line if the model cannot be loaded."""
    settings = settings_from(args, SERVE_FIELDS)
    serve_only_the_chosen_runtime(settings)
    configure_logging(settings)
    from space.memory import limit_fragmentation

    limit_fragmentation()  # before any thread starts: keeps RSS flat under load (see space/memory.py)
    import uvicorn

    from space.web.app import create_app

    failures: list[str] = []

    def stop(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop)  # a missing model stops here, before the port is bound
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,  # uvicorn's loggers go through space.logs like everything else
            access_log=not settings.request_log,  # space.logs writes one line per request instead
            timeout_graceful_shutdown=30,
            # Longer than clients' and proxies' idle timeouts (httpx: 5 s), so the server is never the
            # side that closes a kept-alive connection just as a client sends on it (a lost request).
            timeout_keep_alive=30,
            proxy_headers=True,
            forwarded_allow_ips="*",
        )
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown (draining in-flight requests); by then the
    # stop was clean, so it should exit 0, not die by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    if failures:
        raise ModelUnavailable(failures[0])
    return 0


def predict(args: argparse.Namespace) -> int:
    """Classify image files offline through the service, in requests of up to SPACE_MAX_IMAGES_PER_REQUEST;
    one JSON object per image on stdout. Exit 1 if any failed."""
    settings = settings_from(args, PREDICT_FIELDS)
    configure_logging(settings)
    from space.serving.params import Params
    from space.serving.service import ClassificationService

    service = ClassificationService(settings)
    service.load()
    chunk = settings.max_images_per_request
    failed = 0
    try:
        for start in range(0, len(args.images), chunk):
            names = args.images[start : start + chunk]
            results = asyncio.run(service.classify_each([Path(name) for name in names], Params()))
            for name, result in zip(names, results, strict=True):
                if isinstance(result, UserError):
                    failed += 1
                    line: dict[str, object] = {"file": name, "error": result.reason}
                else:
                    line = {
                        "file": name,
                        "predictions": [{"label": p.label, "score": p.score} for p in result],
                    }
                print(json.dumps(line), flush=True)
    finally:
        service.close()
    return 1 if failed else 0


def serve_only_the_chosen_runtime(settings: Settings) -> None:
    """Keep torch out of a server that another runtime serves (:func:`keep_torch_out`)."""
    from space.backends.choice import keep_torch_out
    from space.serving.loading import resolve

    try:
        choice = resolve(settings).choice
    except ModelUnavailable:
        return  # the app stops start-up with its own message
    keep_torch_out(choice)


def configure_logging(settings: Settings) -> None:
    """JSON lines (text in a terminal) on stderr, for this app and the libraries it uses."""
    from space.web import logs

    logs.configure(settings.log_level, settings.log_format)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``bake`` and ``bench`` get their options (and are imported) only when ``command`` is
    theirs, so ``serve`` and ``predict`` never load build-time or benchmark code."""
    parser = argparse.ArgumentParser(
        prog="python -m space",
        description="vit-space: image classification with a Vision Transformer, served in-process.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_parser = commands.add_parser("serve", help="run the web app (Gradio UI at /, HTTP API at /predict)")
    add_setting_flags(serve_parser, SERVE_FIELDS)
    serve_parser.set_defaults(handler=serve)

    predict_parser = commands.add_parser("predict", help="classify image files offline, one JSON line each")
    predict_parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    add_setting_flags(predict_parser, PREDICT_FIELDS)
    predict_parser.set_defaults(handler=predict)

    bake_parser = commands.add_parser(
        "bake", help="build time: fetch a model (Hub or folder) and the examples, verify, write a manifest"
    )
    if command == "bake":
        from space import bake  # stdlib-only at import time; torch/transformers load inside bake()

        bake.add_arguments(bake_parser)
        bake_parser.set_defaults(handler=bake.main_from_args)

    bench_parser = commands.add_parser(
        "bench", help="benchmark this server against the naive pipeline baseline over HTTP (not a test)"
    )
    if command == "bench":
        from space import bench  # numpy only at import time; servers and models load inside

        bench.add_arguments(bench_parser)
        bench_parser.set_defaults(handler=bench.main_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ValidationError as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
    except ModelUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2
