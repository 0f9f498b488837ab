"""Security defaults, tested against the real server: no outbound sockets, no file served outside what
the app means to serve, CORS closed unless configured, optional token and UI login, secrets never
logged, request bodies not left on disk."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from tests.conftest import PHOTOS, Server, start_server, wait_until_ready

TOKEN = "tok-3f9c2a7e-not-a-real-secret"
UI_USER, UI_PASSWORD = "admin", "pw-8d1e5b-not-a-real-secret"
EVIL = "https://evil.example"
GOOD = "https://good.example"


def tcp_sockets(pid: int) -> list[tuple[str, int, str, int]]:
    """(local address, local port, remote address, remote port) of every TCP socket the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            local, remote = fields[1], fields[2]
            found.append(
                (
                    f"{table}:{local.split(':')[0]}",
                    int(local.split(":")[1], 16),
                    remote.split(":")[0],
                    int(remote.split(":")[1], 16),
                )
            )
    return found


@pytest.fixture(scope="module")
def secured(real_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A server with the token, the UI login and one allowed origin, watched for sockets from its first
    moment: a thread lists the process's TCP/UDP sockets every 20 ms until the module ends."""
    tmp = tmp_path_factory.mktemp("secured-tmp")
    env = {
        "SPACE_API_TOKEN": TOKEN,
        "SPACE_UI_AUTH": f"{UI_USER}:{UI_PASSWORD}",
        "SPACE_CORS_ORIGINS": GOOD,
        "TMPDIR": str(tmp),
    }
    server = start_server(real_model, tmp_path_factory.mktemp("secured"), env=env, wait_ready=False)
    seen: list[tuple[str, int, str, int]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):  # a socket closed while being listed
                seen.extend(s for s in tcp_sockets(server.process.pid) if s not in seen)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wait_until_ready(server)
        yield Secured(server, seen, tmp)
    finally:
        stop.set()
        watcher.join()
        server.stop()


@dataclass
class Secured:
    server: Server
    seen: list[tuple[str, int, str, int]]
    tmp: Path


def auth() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def test_token_guards_predict_and_info(secured: Secured) -> None:
    server = secured.server
    image = (PHOTOS / "lion.jpg").read_bytes()
    with server.client() as client:
        for path in ("/predict", "/info"):
            method = client.post if path == "/predict" else client.get
            kwargs = {"content": image} if path == "/predict" else {}
            missing = method(path, **kwargs)
            assert missing.status_code == 401 and "Bearer" in missing.json()["error"]
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = method(path, headers={"authorization": f"Bearer {TOKEN[:-1]}x"}, **kwargs)
            assert wrong.status_code == 401 and "wrong" in wrong.json()["error"]
            assert method(path, headers=auth(), **kwargs).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(open_path).status_code == 200, open_path
        assert TOKEN not in client.get("/info", headers=auth()).text


def test_ui_needs_its_login(secured: Secured) -> None:
    server = secured.server
    with pytest.raises(Exception, match=r"(?i)login|auth|401|unauthor"):
        Client(server.url, verbose=False)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/gradio_api/info").status_code == 401
        wrong = client.post("/login", data={"username": UI_USER, "password": "nope"})
        assert wrong.status_code >= 400
    ui = Client(server.url, auth=(UI_USER, UI_PASSWORD), verbose=False)
    result = ui.predict(handle_file(PHOTOS / "zebra.jpg"), 3, api_name="/classify")
    assert result[0]["label"] == "zebra"


def test_secrets_never_logged(secured: Secured) -> None:
    server = secured.server
    with server.client() as client:  # exercise failures too: wrong token, bad login
        client.post("/predict", content=b"x", headers={"authorization": "Bearer wrong"})
        client.post("/login", data={"username": UI_USER, "password": "wrong"})
    log = server.log()
    assert "tok-3f9c2a7e" not in log and "pw-8d1e5b" not in log
    assert len(log) > 200  # the log is there and has content


def test_cors_closed_except_configured_origin(secured: Secured) -> None:
    """Including Gradio's routes on a public host name, where Gradio alone would reflect any origin."""
    server = secured.server
    with server.client() as client:
        for path in ("/predict", "/info", "/gradio_api/info", "/config", "/"):
            for host in ("127.0.0.1", "space.example.com"):
                preflight = client.options(
                    path, headers={"origin": EVIL, "access-control-request-method": "POST", "host": host}
                )
                assert "access-control-allow-origin" not in preflight.headers, (path, host)
                simple = client.get(path, headers={"origin": EVIL, "host": host, **auth()})
                assert "access-control-allow-origin" not in simple.headers, (path, host)
        allowed = client.options(
            "/predict",
            headers={
                "origin": GOOD,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization",
            },
        )
        assert allowed.headers["access-control-allow-origin"] == GOOD
        posted = client.post(
            "/predict", content=(PHOTOS / "lion.jpg").read_bytes(), headers={"origin": GOOD, **auth()}
        )
        assert posted.status_code == 200 and posted.headers["access-control-allow-origin"] == GOOD


TRAVERSALS = [
    "/gradio_api/file=/etc/passwd",
    "/gradio_api/file=../../../../../../etc/passwd",
    "/gradio_api/file=%2Fetc%2Fpasswd",
    "/gradio_api/file=..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/gradio_api/file=%252Fetc%252Fpasswd",
    "/gradio_api/file=....//....//....//etc/passwd",
    "/gradio_api/file=/proc/self/environ",
    "/gradio_api/file={photos}/../labels.csv/../../models/efficientnet-lite0-imagenet/config.json",
    "/gradio_api/file={photos}/%2e%2e/models/efficientnet-lite0-imagenet/config.json",
    "/gradio_api/file={repo}/space/settings.py",
    "/gradio_api/file={tmp}",
    "/file=/etc/passwd",
    "/gradio_api/file=/etc/passwd%00.jpg",
    "/static/../../../../etc/passwd",
    "/assets/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
]


@pytest.mark.parametrize("template", TRAVERSALS)
def test_file_routes_serve_nothing_outside_the_app(secured: Secured, template: str) -> None:
    server, tmp = secured.server, secured.tmp
    path = template.format(photos=PHOTOS, repo=Path(__file__).resolve().parents[1], tmp=tmp)
    ui = Client(server.url, auth=(UI_USER, UI_PASSWORD), verbose=False)  # logged in: the strongest case
    with httpx.Client(base_url=server.url, timeout=30, cookies=ui.cookies) as client:
        response = client.get(path)
    assert response.status_code in (400, 403, 404, 405), (path, response.status_code, response.text[:200])
    for secret in ("root:x:", "SPACE_API_TOKEN", "model_type", "class Settings"):
        assert secret not in response.text


def test_allowed_example_file_is_served(secured: Secured) -> None:
    """The control for the traversal tests: the route works for what the app means to serve."""
    server = secured.server
    ui = Client(server.url, auth=(UI_USER, UI_PASSWORD), verbose=False)
    with httpx.Client(base_url=server.url, timeout=30, cookies=ui.cookies) as client:
        response = client.get(f"/gradio_api/file={PHOTOS / 'lion.jpg'}")
    assert response.status_code == 200
    assert response.content == (PHOTOS / "lion.jpg").read_bytes()


def test_api_request_bodies_never_touch_disk(secured: Secured) -> None:
    """Raw, base64 JSON and multipart uploads (2 MB) stay in memory: TMPDIR stays empty."""
    import base64

    server, tmp = secured.server, secured.tmp
    image = (PHOTOS / "coffee.png").read_bytes() * 4  # a valid PNG followed by bytes: over 1 MB
    before = {p for p in tmp.rglob("*") if p.is_file()}  # torch may make empty cache folders at import
    with server.client(headers=auth()) as client:
        assert client.post("/predict", content=image).status_code == 200
        encoded = base64.b64encode(image).decode()
        assert client.post("/predict", json={"inputs": encoded}).status_code == 200
        assert client.post("/predict", files={"file": ("c.png", image, "image/png")}).status_code == 200
    assert {p for p in tmp.rglob("*") if p.is_file()} == before


def test_no_socket_other_than_the_listener_and_its_clients(secured: Secured) -> None:
    """Everything the server did in this module, from start-up on: only 127.0.0.1:<port> sockets."""
    server, seen = secured.server, secured.seen
    port = int(server.url.rsplit(":", 1)[1])
    with server.client(headers=auth()) as client:  # make sure there was serving to watch
        assert client.post("/predict", content=(PHOTOS / "frog.jpg").read_bytes()).status_code == 200
    time.sleep(0.1)
    assert seen, "the watcher saw no socket at all (not even the listener)"
    strangers = [s for s in seen if s[1] != port or not s[0].startswith("tcp")]
    assert not strangers, f"sockets other than the listener on {port} and its clients: {strangers}"


def test_ui_uploads_are_deleted_at_shutdown(
    server_factory: Callable[..., Server], tiny_vit: Path, tmp_path: Path
) -> None:
    """Gradio must write UI uploads to GRADIO_TEMP_DIR; the app has them deleted (by age, and at exit)."""
    gradio_tmp = tmp_path / "gradio"
    upload = tmp_path / "upload-probe.jpg"  # a name no example has (Gradio also caches the examples)
    upload.write_bytes((PHOTOS / "zebra.jpg").read_bytes())
    server = server_factory(tiny_vit, env={"GRADIO_TEMP_DIR": str(gradio_tmp)})
    Client(server.url, verbose=False).predict(handle_file(upload), 3, api_name="/classify")
    assert list(gradio_tmp.rglob(upload.name)), "the upload was not where Gradio keeps them"
    assert server.stop() == 0
    assert not list(gradio_tmp.rglob(upload.name)), "the UI upload outlived the server"


def test_invalid_secret_setting_is_reported_without_its_value() -> None:
    env = {**os.environ, "SPACE_UI_AUTH": "pw-8d1e5b-no-colon", "SPACE_MODEL": str(PHOTOS)}
    result = subprocess.run(
        [sys.executable, "-m", "space", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "SPACE_UI_AUTH" in result.stderr and "user:password" in result.stderr
    assert "pw-8d1e5b" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("raw", "origins"),
    [
        ("", ()),
        ("https://a.example", ("https://a.example",)),
        ("https://a.example, https://b.example", ("https://a.example", "https://b.example")),
        ('["https://a.example"]', ("https://a.example",)),
    ],
)
def test_cors_origins_setting_forms(
    raw: str, origins: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    from space.settings import Settings

    monkeypatch.setenv("SPACE_CORS_ORIGINS", raw)
    assert Settings().cors_origins == origins
    assert "secret" not in repr(Settings(api_token="secret", ui_auth="u:secret"))
