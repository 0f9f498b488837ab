"""Command line: ``python -m space serve | predict | ...``; every setting is a flag too, and flags win."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from space.errors import ModelUnavailable, UserError
from space.settings import Settings, describe_error, env_name, load_settings

SERVE_FIELDS = tuple(Settings.model_fields)
PREDICT_FIELDS = ("model", "model_revision", "top_k", "threads", "max_upload_mb", "max_pixels", "log_level")
FLAG_NAMES = {"model_revision": "revision"}  # shorter flags where the field name is long


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
    configure_logging(settings.log_level)
    import uvicorn

    from space.app import create_app
    from space.classifier import resolve_model

    resolve_model(settings.model, settings.model_revision)  # fail before binding the port if it is missing
    failures: list[str] = []

    def stop(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(settings, on_load_failure=stop)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=30,
            proxy_headers=True,
            forwarded_allow_ips="*",
        )
    )
    server.run()
    if failures:
        raise ModelUnavailable(failures[0])
    return 0


def predict(args: argparse.Namespace) -> int:
    """Classify image files offline; one JSON object per image on stdout. Exit 1 if any failed."""
    settings = settings_from(args, PREDICT_FIELDS)
    configure_logging(settings.log_level)
    from space.runtime import Runtime

    runtime = Runtime(settings)
    runtime.load()
    failed = 0
    for path in args.images:
        try:
            predictions = runtime.classify_file(path, settings.top_k)
            result: dict[str, object] = {"file": path, "predictions": [vars(p) for p in predictions]}
        except (UserError, OSError) as error:
            failed += 1
            result = {"file": path, "error": getattr(error, "message", None) or str(error)}
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
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

    from space import bake  # stdlib-only at import time; torch/transformers load inside bake()

    bake_parser = commands.add_parser(
        "bake", help="build time: fetch a model (Hub or folder) and the examples, verify, write a manifest"
    )
    bake.add_arguments(bake_parser)
    bake_parser.set_defaults(handler=bake.main_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
