"""Faults: SIGTERM drains in-flight requests and exits 0; a missing or corrupt model fails fast with a
clear message and a non-zero exit; a read-only model folder, a read-only root filesystem with only /tmp
writable, and no network at all still serve.

The read-only and no-network cases run the real server inside new mount and network namespaces
(``unshare``, as root, which CI and the dev machine are), with the client inside the same namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PHOTOS, REPO, Server, needs, start_server

pytestmark = pytest.mark.server


def can_unshare() -> bool:
    """Root with working mount and network namespaces (not every container allows them)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True, check=False)
    return probe.returncode == 0


namespaces = needs(can_unshare(), "needs root and unshare (mount and network namespaces); CI runs it as root")


def raw_request_head(server: Server, length: int) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        f"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    return sock


def read_response(sock: socket.socket, timeout: float = 60) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_sigterm_drains_the_request_in_flight_then_exits_0(
    server_factory: Callable[..., Server], real_model: Path
) -> None:
    server = server_factory(real_model)
    image = (PHOTOS / "lion.jpg").read_bytes()
    sock = raw_request_head(server, len(image))
    sock.sendall(image[:1000])  # the request is in flight: headers and part of the body received
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert server.process.poll() is None, "the server exited with a request in flight"
    with pytest.raises(OSError):  # it no longer accepts new connections
        socket.create_connection(server.url.removeprefix("http://").split(":"), timeout=2)
    sock.sendall(image[1000:])
    status, raw = read_response(sock)
    sock.close()
    assert status == 200, raw
    assert b'"label"' in raw
    assert server.process.wait(timeout=30) == 0, server.log()
    assert "Shutting down" in server.log() or "shutdown" in server.log().lower()


def test_sigterm_with_a_burst_in_flight_answers_every_request(
    server_factory: Callable[..., Server], real_model: Path
) -> None:
    """Twenty concurrent predictions, SIGTERM while they run: each gets its answer (200 or 503)."""
    import asyncio

    import httpx

    server = server_factory(real_model, env={"SPACE_MAX_IN_FLIGHT": "8"})
    image = (PHOTOS / "zebra.jpg").read_bytes()

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            tasks = [asyncio.create_task(client.post("/predict", content=image)) for _ in range(20)]
            await asyncio.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            return [response.status_code for response in await asyncio.gather(*tasks)]

    statuses = asyncio.run(run())
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses
    assert server.process.wait(timeout=30) == 0, server.log()


# --- start-up with a broken model ----------------------------------------------------------------


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def truncated_weights(model: Path, tmp: Path) -> Path:
    folder = copy_model(model, tmp / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def missing_config(model: Path, tmp: Path) -> Path:
    folder = copy_model(model, tmp / "no-config")
    (folder / "config.json").unlink()
    return folder


def missing_weights(model: Path, tmp: Path) -> Path:
    folder = copy_model(model, tmp / "no-weights")
    (folder / "model.safetensors").unlink()
    return folder


def bert_config(model: Path, tmp: Path) -> Path:
    """A text model's config (BERT) beside image weights: the wrong architecture."""
    folder = copy_model(model, tmp / "bert")
    config = {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 37,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def no_such_folder(model: Path, tmp: Path) -> Path:
    return tmp / "does-not-exist"


@pytest.mark.parametrize(
    "breakage",
    [truncated_weights, missing_config, missing_weights, bert_config, no_such_folder],
    ids=lambda f: f.__name__,
)
def test_broken_model_fails_fast_with_a_clear_message(
    breakage: Callable[[Path, Path], Path], real_model: Path, tmp_path: Path
) -> None:
    folder = breakage(real_model, tmp_path)
    server = start_server(folder, tmp_path, wait_ready=False)
    try:
        code = server.process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        server.stop()
        raise AssertionError(
            f"still running 120 s after start with a broken model:\n{server.log()}"
        ) from None
    log = server.log()
    assert code != 0, log
    error_lines = [line for line in log.splitlines() if line.startswith("error: ")]
    assert error_lines, f"no one-line 'error:' message:\n{log}"
    message = error_lines[-1]
    assert str(folder) in message or "SPACE_MODEL" in message, message
    assert "Traceback" not in message


# --- read-only and offline -----------------------------------------------------------------------


@namespaces
def test_read_only_root_with_only_tmp_writable_and_no_network(real_model: Path) -> None:
    """Every filesystem read-only (HOME, the repository, the venv, and so the model folder too), a fresh
    tmpfs on /tmp, and a network namespace with nothing but loopback: the server starts, predicts, serves
    the UI (an upload through Gradio included), and stops cleanly."""
    script = (
        hold_tmp_checkout()[0]
        + "mount -o remount,bind,ro / && mount -t tmpfs -o size=256m tmpfs /tmp && "
        + hold_tmp_checkout()[1]
        + "touch /root/probe 2>/dev/null && echo ROOT_WRITABLE; "
        + serve_and_check(real_model, home=Path("/root"))
    )
    result = in_namespace(script, network=False)
    assert "ROOT_WRITABLE" not in result.stdout
    report = check_namespace_result(result)
    assert report["outbound"] != 0, "an outbound connection succeeded: the namespace has a network"


CLIENT = textwrap.dedent(
    """
    import json, socket, sys, time, httpx
    url, image = sys.argv[1], open(sys.argv[2], "rb").read()
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    predict = httpx.post(url + "/predict", content=image, timeout=60)
    page = httpx.get(url + "/", timeout=30)
    from gradio_client import Client, handle_file
    ui = Client(url, verbose=False).predict(handle_file(sys.argv[2]), 3, api_name="/classify")
    probe = socket.socket()
    probe.settimeout(2)
    outbound = probe.connect_ex(("1.1.1.1", 443))
    print(json.dumps({"predict": predict.status_code, "labels": predict.json(), "page": page.status_code,
                      "ui": ui[0]["label"], "outbound": outbound}))
    """
)


def hold_tmp_checkout() -> tuple[str, str]:
    """Shell run before and after the fresh tmpfs hides /tmp, for a checkout that lives under /tmp.

    CI may clone the repository anywhere, /tmp included: the old /tmp is held
    on a bind mount and the checkout's parent folder is bound back, read-only, into the new tmpfs.
    """
    top = REPO.parent.resolve()
    if not top.is_relative_to("/tmp"):
        return "", ""
    held = Path("/mnt/vit-space-held-tmp")
    before = f"mkdir -p {held} && mount --rbind /tmp {held} && "
    after = (
        f"mkdir -p {top} && mount --rbind {held / top.relative_to('/tmp')} {top} && "
        f"mount -o remount,bind,ro {top} && "
    )
    return before, after


def serve_and_check(model: Path, home: Path) -> str:
    """Shell: start the server in the background, run the client, stop the server with SIGTERM.

    Only the app's own settings are given: HOME is read-only, and nothing points Gradio, Hugging Face or
    matplotlib at a writable folder, so the defaults must cope (Gradio's default is $TMPDIR/gradio).
    """
    env = f"HOME={home} SPACE_MODEL={model} SPACE_PORT=7861 SPACE_HOST=127.0.0.1 SPACE_EXAMPLES_DIR={PHOTOS}"
    return "\n".join(
        [
            f"cd {REPO} && ip link set lo up || exit 3",
            f"env -u GRADIO_TEMP_DIR {env} {sys.executable} -m space serve > /tmp/server.log 2>&1 &",
            "pid=$!",
            f"{sys.executable} -c '{CLIENT}' http://127.0.0.1:7861 {PHOTOS / 'lion.jpg'}",
            "status=$?",
            "kill -TERM $pid; wait $pid; server=$?",
            "echo ---server-log---; cat /tmp/server.log; echo server exit $server",
            'test "$server" = 0 && exit $status',
        ]
    )


def in_namespace(script: str, network: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as root in new mount (and, unless ``network``, network) namespaces."""
    assert os.geteuid() == 0 and shutil.which("unshare"), "these fault tests need root and unshare"
    flags = ["--mount", "--propagation", "private"] + ([] if network else ["--net"])
    return subprocess.run(
        ["unshare", *flags, "sh", "-c", script], capture_output=True, text=True, timeout=300, check=False
    )


def check_namespace_result(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    report = json.loads(result.stdout.split("---server-log---")[0].strip().splitlines()[-1])
    assert report["predict"] == 200 and report["labels"][0]["label"], report
    assert report["page"] == 200
    assert report["ui"] == report["labels"][0]["label"]
    return report
