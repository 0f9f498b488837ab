"""Issue 16: overload sheds before it spends. Admission is decided before the body is read; a full
server answers 503 at once and closes, never reading the upload; admitted work that cannot start
within ``SPACE_QUEUE_TIMEOUT_S`` is refused rather than queued for seconds."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from space.serving.admission import Admission, Overloaded
from tests.conftest import Photo, Server


def hold(release: threading.Event) -> str:
    release.wait(10)
    return "done"


async def _run_in_slot(admission: Admission, release: threading.Event) -> str:
    with admission.slot() as slot:
        return await slot.run(hold, release)


def test_full_admission_refuses_before_anything_is_read() -> None:
    admission = Admission(limit=1, timeout_s=5, workers=1)
    try:
        with admission.slot():
            with pytest.raises(Overloaded, match="busy") as refused, admission.slot():
                pass
            assert refused.value.body_unread  # the handler closes the connection instead of reading
        with admission.slot():  # the slot came back when the first request was done
            pass
    finally:
        admission.shutdown()


def test_work_that_cannot_start_in_time_is_refused_and_frees_its_slot() -> None:
    """Two slots, one thread: the second admitted call waits for the thread, past the start bound."""
    import asyncio

    admission = Admission(limit=2, timeout_s=30, workers=1, queue_timeout_s=0.2)
    release = threading.Event()
    try:

        async def scenario() -> tuple[float, str]:
            first = asyncio.create_task(_run_in_slot(admission, release))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(Overloaded, match=r"could not start within 0\.2 s") as refused:
                await _run_in_slot(admission, release)
            waited = time.monotonic() - started
            assert not refused.value.body_unread
            with pytest.raises(Overloaded, match=r"could not start"):  # the same bound for the UI path
                await asyncio.to_thread(admission.run_sync, hold, release)
            release.set()
            return waited, await first

        waited, first = asyncio.run(scenario())
        assert 0.2 <= waited < 5 and first == "done"
        with admission.slot(), admission.slot():  # both refused calls gave their slots back
            pass
    finally:
        release.set()
        admission.shutdown()


def raw_post_headers(url: str, length: int) -> socket.socket:
    """A POST /predict whose headers promise ``length`` bytes; the body is not sent."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return sock


def read_response_head(sock: socket.socket) -> tuple[str, bytes]:
    """The response head, and whatever of the body came in the same reads."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_full_server_answers_503_without_reading_the_upload(
    server_factory: Callable[..., Server], tiny_vit: Path, photos: list[Photo]
) -> None:
    server = server_factory(tiny_vit, env={"SPACE_MAX_IN_FLIGHT": "1", "SPACE_BODY_TIMEOUT_S": "20"})
    holder = raw_post_headers(server.url, 1_000_000)  # admitted, then its upload stalls: the slot is held
    holder.sendall(b"\xff\xd8" + b"\0" * 1000)
    time.sleep(0.5)
    try:
        shed = raw_post_headers(server.url, 5_000_000)  # 5 MB promised, not one byte of it sent
        started = time.monotonic()
        head, rest = read_response_head(shed)
        head = head.lower()
        assert time.monotonic() - started < 5
        assert head.startswith("http/1.1 503"), head
        assert "retry-after: 1" in head and "connection: close" in head, head
        shed.settimeout(5)
        while chunk := shed.recv(4096):  # the server closes the connection after its answer
            rest += chunk
        assert b"busy" in rest
        shed.close()
        # Refused at the door (space/web/door.py): counted like any answer, logged once a second at most.
        metrics = server.client().get("/metrics").text
        assert 'space_http_requests_total{method="POST",route="/predict",status="503"} 1.0' in metrics
        assert "refused 1 request(s) at the door" in server.log()
    finally:
        holder.close()  # the stalled upload ends; its slot comes back
    with server.client() as client:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            status = client.post("/predict", content=photos[0].path.read_bytes()).status_code
            time.sleep(0.1)
        assert status == 200
    assert "Traceback" not in server.log()
