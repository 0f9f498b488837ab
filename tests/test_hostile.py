"""Hostile and odd uploads against the real server: each one gets its 4xx (or a timeout for that request
only), the process stays up with bounded memory, and a good request right after succeeds."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.hostile import corpus

BODY_TIMEOUT_S = 2


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (what the kernel charges it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., Server], tiny_vit: Path) -> Server:
    """The tiny ViT (the inference is not what is tested here), with a short body time limit."""
    return server_factory(tiny_vit, env={"SPACE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)})


def good_request(client: httpx.Client) -> None:
    response = client.post("/predict", content=corpus.seeds()["jpeg"], headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert len(response.json()) >= 1


def send(client: httpx.Client, case: corpus.Case) -> httpx.Response:
    return client.post("/predict", content=case.body, headers=case.headers)


@pytest.mark.parametrize("case", corpus.corpus(), ids=lambda case: case.name)
def test_hostile_upload_gets_its_status(server: Server, case: corpus.Case) -> None:
    with server.client() as client:
        response = send(client, case)
        assert response.status_code in case.expect, f"{case.name}: {response.status_code} {response.text}"
        if response.status_code == 200:  # a valid image inside a polyglot: labels only, nothing echoed
            assert all(set(item) == {"label", "score"} for item in response.json())
        else:
            error = response.json()["error"]
            assert len(error) > 20 and "Traceback" not in error
        good_request(client)
    assert server.process.poll() is None, server.log()


def test_memory_stays_bounded_over_repeated_corpus(server: Server) -> None:
    """Three passes over the corpus: after the first (allocator warm), memory does not keep growing."""
    cases = corpus.corpus()
    with server.client() as client:
        for case in cases:
            send(client, case)
        first = rss_bytes(server.process.pid)
        for _ in range(2):
            for case in cases:
                send(client, case)
        third = rss_bytes(server.process.pid)
        good_request(client)
    print(f"\nRSS after pass 1: {first / 2**20:.0f} MiB, after pass 3: {third / 2**20:.0f} MiB")
    assert third <= first * 1.10, f"RSS grew from {first / 2**20:.0f} to {third / 2**20:.0f} MiB"


def open_stalled_upload(server: Server, sent: bytes, declared: int) -> socket.socket:
    """A raw connection that declares ``declared`` body bytes, sends ``sent`` of them, then stalls."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
        + sent
    )
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """The whole response; the server must close the connection after it (the body was never finished)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_stalled_upload_times_out_with_408_and_others_are_served(server: Server) -> None:
    image = corpus.seeds()["jpeg"]
    stalled = [open_stalled_upload(server, image[: n * 10], len(image) + 1000) for n in range(5)]
    started = time.monotonic()
    try:
        with server.client() as client:
            good_request(client)  # served while five uploads hang
        assert time.monotonic() - started < BODY_TIMEOUT_S, "a good request waited for stalled uploads"
        for sock in stalled:
            status, raw = read_until_closed(sock, timeout=BODY_TIMEOUT_S + 10)
            assert status == 408, raw
            assert b"did not finish within" in raw
        assert time.monotonic() - started < BODY_TIMEOUT_S + 10
    finally:
        for sock in stalled:
            sock.close()
    with server.client() as client:
        good_request(client)


def test_upload_dropped_midway_leaves_server_healthy(server: Server) -> None:
    """Clients that vanish mid-body (closed sockets) cost nothing lasting."""
    image = corpus.seeds()["png"]
    for _ in range(20):
        open_stalled_upload(server, image[:50], len(image)).close()
    with server.client() as client:
        good_request(client)
        assert client.get("/healthz").status_code == 200
    assert server.process.poll() is None


@pytest.mark.parametrize(
    ("encoding", "status"), [("gzip", 415), ("deflate", 415), ("br", 415), ("identity", 200)]
)
def test_content_encoding_is_never_inflated(server: Server, encoding: str, status: int) -> None:
    """Starlette does not decompress request bodies; the API refuses encoded ones explicitly (415)."""
    with server.client() as client:
        response = client.post(
            "/predict",
            content=corpus.seeds()["png"],
            headers={"content-type": "image/png", "content-encoding": encoding},
        )
    assert response.status_code == status, response.text
    if status == 415:
        assert "Content-Encoding" in response.json()["error"]
