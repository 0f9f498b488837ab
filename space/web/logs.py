"""Logging: one JSON object per line for machines, readable lines in a terminal, one line per request.

Each request gets an id (the caller's ``X-Request-ID`` if sane, else a new one), returned in the
response's ``X-Request-ID`` header and written on its log line, so a user's report can be found in the logs.
Request bodies and headers are never logged; token-like strings are masked in every line as a last guard.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Hugging Face tokens, bearer/basic credentials and key=value secrets, wherever they show up in a line.
_SECRETS = re.compile(
    r"(hf_[A-Za-z0-9]{8,})|((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=\-]+|"
    r"((?:token|password|secret|api_key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',&]+",
    re.IGNORECASE,
)
# LogRecord's own attributes, and uvicorn's ANSI-coloured copy of its message: not extra fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}

request_log = logging.getLogger("space.request")
LogFormat = Literal["auto", "json", "text"]


def redact(text: str) -> str:
    """``text`` with anything that looks like a token or credential replaced by ``***``."""

    def mask(match: re.Match[str]) -> str:
        if match.group(1):
            return "hf_***"
        return (match.group(2) or match.group(3) or "") + "***"

    return _SECRETS.sub(mask, text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``12:00:01 INFO  space.request: request method=GET route=/ status=200 ...`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        clock = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        line = f"{clock} {record.levelname:<5} {record.name}: {record.getMessage()}"
        line = f"{line} {fields}" if fields else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


def configure(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Send all logs to ``stream`` (stderr): JSON lines, or text when ``fmt`` is text or auto on a TTY."""
    stream = stream or sys.stderr
    text = fmt == "text" or (fmt == "auto" and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty at INFO: HTTP clients log every call (Gradio's MCP bridge calls the app), MCP every session.
    for noisy in ("httpx", "httpcore", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def request_id_from(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when it is a short plain token, else a fresh one."""
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


def route_label(scope: Scope) -> str | None:
    """The template of the route that served the request (``/gradio_api/file={path_or_url:path}``)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if not isinstance(template, str):
        return None
    # A mounted sub-app's templates are relative to its mount point, which Starlette puts in root_path.
    prefix = scope.get("root_path", "") or ""
    app_root = scope.get("app_root_path", "") or ""
    if app_root and prefix.startswith(app_root):
        prefix = prefix[len(app_root) :]
    return (prefix.rstrip("/") + template) or "/"


class RequestLogMiddleware:
    """Pure ASGI (streams and server-sent events pass through untouched): id, timing, one line per request.

    ``on_done(scope, status, seconds)`` runs after each request too (the metrics use it).
    """

    def __init__(
        self, app: ASGIApp, enabled: bool = True, on_done: Callable[[Scope, int, float], None] | None = None
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if self.on_done is not None:
                self.on_done(scope, status, seconds)
            if self.enabled:
                self._log(scope, request_id, status, seconds)

    @staticmethod
    def _log(scope: Scope, request_id: str, status: int, seconds: float) -> None:
        body_bytes = next(
            (int(v) for k, v in scope.get("headers", []) if k == b"content-length" and v.isdigit()), None
        )
        extra: dict[str, Any] = {
            "request_id": request_id,
            "method": scope.get("method"),
            "route": route_label(scope),
            "path": scope.get("path"),  # never the query string: it may carry tokens
            "status": status,
            "latency_ms": round(seconds * 1000, 1),
        }
        if body_bytes is not None:
            extra["body_bytes"] = body_bytes
        level = logging.WARNING if status >= 500 else logging.INFO
        request_log.log(level, "request", extra=extra)
