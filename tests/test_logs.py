"""Logs: one JSON line per request with its id, route, status, latency and size; text on a terminal;
never image bytes or secrets."""

from __future__ import annotations

import base64
import json
import logging
import os
import pty
import re
import time

import pytest

from space.web import logs
from tests.conftest import Photo, Server

SECRET = "hf_SuperSecretTokenValue1234567890"


def request_lines(server: Server, request_id: str, timeout: float = 10) -> list[dict]:
    """The server's JSON log lines for ``request_id`` (the line is written just after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        found = [line for line in lines if line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_one_json_line_per_request_with_id_route_status_latency_size(
    real_server: Server, photos: list[Photo]
) -> None:
    lion = next(p for p in photos if p.path.name == "lion.jpg")
    data = lion.path.read_bytes()
    headers = {"content-type": "image/jpeg", "x-request-id": "ticket-42.a"}
    response = real_server.client().post("/predict?top_k=2", content=data, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "ticket-42.a"
    [line] = request_lines(real_server, "ticket-42.a")
    assert line["logger"] == "space.request" and line["level"] == "info"
    assert line["method"] == "POST" and line["route"] == "/predict" and line["path"] == "/predict"
    assert line["status"] == 200
    assert 0 < line["latency_ms"] < 60_000
    assert line["body_bytes"] == len(data)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])
    # uvicorn's own access log is off: ours is the only line for the request.
    assert "uvicorn.access" not in real_server.log()


def test_request_id_is_generated_when_missing_or_unsafe(real_server: Server) -> None:
    with real_server.client() as client:
        fresh = client.get("/healthz").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", fresh)
        assert len(request_lines(real_server, fresh)) == 1
        for unsafe in ("has spaces in it", "x" * 200, 'quote"brace{'):
            replaced = client.get("/healthz", headers={"x-request-id": unsafe}).headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", replaced), unsafe
        missing = client.get("/no/such/page")
        assert missing.status_code == 404
        [line] = request_lines(real_server, missing.headers["x-request-id"])
        assert line["status"] == 404 and line["route"] is None and line["path"] == "/no/such/page"


def test_no_image_bytes_and_no_secrets_in_the_log(real_server: Server, photos: list[Photo]) -> None:
    orange = next(p for p in photos if p.path.name == "orange.jpg")
    encoded = base64.b64encode(orange.path.read_bytes()).decode()
    with real_server.client() as client:
        response = client.post(
            f"/predict?token={SECRET}",
            json={"inputs": encoded},
            headers={"authorization": f"Bearer {SECRET}", "cookie": f"session={SECRET}"},
        )
        assert response.status_code == 200
        rid = response.headers["x-request-id"]
        [line] = request_lines(real_server, rid)
        assert line["path"] == "/predict"
    log = real_server.log()
    assert SECRET not in log
    assert encoded[:64] not in log and encoded[-64:] not in log


@pytest.mark.parametrize(
    "text",
    [
        f"token={SECRET}",
        f"Authorization: Bearer {SECRET}",
        f'{{"api_key": "{SECRET}"}}',
        f"loading with {SECRET} now",
    ],
)
def test_redact_masks_tokens_wherever_they_appear(text: str) -> None:
    masked = logs.redact(text)
    assert SECRET not in masked and "***" in masked


def test_text_lines_on_a_terminal_json_otherwise(tmp_path) -> None:
    master, slave = pty.openpty()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        with os.fdopen(slave, "w", closefd=True) as terminal:
            logs.configure("info", "auto", stream=terminal)
            logging.getLogger("space.test").info("hello", extra={"request_id": "abc", "status": 200})
            terminal.flush()
            shown = os.read(master, 4096).decode()
        assert re.match(r"\d\d:\d\d:\d\d INFO  space\.test: hello request_id=abc status=200", shown), shown
        with (tmp_path / "log.jsonl").open("w+") as file:
            logs.configure("info", "auto", stream=file)
            logging.getLogger("space.test").info("hello", extra={"request_id": "abc"})
            file.seek(0)
            entry = json.loads(file.read())
        assert entry["msg"] == "hello" and entry["request_id"] == "abc" and entry["level"] == "info"
    finally:
        os.close(master)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_request_log_off_gives_uvicorns_access_log_and_text_format(server_factory, tiny_vit) -> None:
    server = server_factory(tiny_vit, env={"SPACE_REQUEST_LOG": "false", "SPACE_LOG_FORMAT": "text"})
    response = server.client().get("/healthz")
    assert response.status_code == 200 and response.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while '"GET /healthz HTTP/1.1" 200' not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log()
    assert re.search(r'\d\d:\d\d:\d\d INFO  uvicorn\.access: .*"GET /healthz HTTP/1\.1" 200', log), log
    assert "space.request" not in log and not any(line.startswith("{") for line in log.splitlines())
    server.stop()
