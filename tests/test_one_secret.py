"""Issue 16: one secret guards every route (the route table is walked, so none can be forgotten), every
client sends it its own way, people log in on the page; ``SPACE_UI=false`` serves the API alone."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from playwright.sync_api import expect, sync_playwright
from starlette.routing import Mount

from space.web.security import OPEN_PATHS, OPEN_PREFIXES, is_open
from tests.conftest import REPO, Photo, Server

pytestmark = pytest.mark.server

TOKEN = "tok-16-b2c9e1-not-a-real-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MCP_PATH = "/gradio_api/mcp/"


@pytest.fixture(scope="module")
def guarded(server_factory: Callable[..., Server], tiny_vit: Path) -> Server:
    """The token set, no SPACE_UI_AUTH (so the token is also the page's password), MCP on."""
    return server_factory(tiny_vit, env={"SPACE_API_TOKEN": TOKEN, "SPACE_MCP": "1", "SPACE_TOP_K": "3"})


@pytest.fixture(scope="module")
def image(photos: list[Photo]) -> Path:
    return photos[0].path


def route_table(model: Path) -> list[tuple[str, str]]:
    """(method, concrete path) for every route of the app as the server builds it, Gradio's included."""
    from space.settings import Settings
    from space.web.app import create_app

    app = create_app(Settings(model=str(model), api_token=TOKEN, mcp=True))
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any], prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included router
                walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif isinstance(route, Mount):
                inner = getattr(route.app, "routes", None)
                if inner is not None:
                    walk(inner, prefix + route.path)
                else:  # an ASGI app behind a prefix (the MCP transport)
                    found.append(("POST", prefix + route.path + "/"))
            else:
                path = re.sub(r"\{[^}]+\}", "x", prefix + route.path)
                for method in sorted(getattr(route, "methods", None) or {"GET"}):
                    if method != "HEAD":
                        found.append((method, path))

    walk(app.routes, "")
    return sorted(set(found))


def refused_by_us(client: httpx.Client, method: str, path: str, headers: dict[str, str] | None = None) -> int:
    """The status if our guard refused the request (its 401 names our realm), else 0. Streaming routes
    (SSE) answer their headers at once and are not read further."""
    with client.stream(method, path, headers=headers) as response:
        ours = response.headers.get("www-authenticate") == 'Bearer realm="vit-space"'
        return response.status_code if ours else 0


def test_every_route_outside_the_open_list_needs_the_token(guarded: Server, tiny_vit: Path) -> None:
    routes = route_table(tiny_vit)
    paths = {path for _, path in routes}
    assert {"/predict", "/info", "/gradio_api/queue/join", "/gradio_api/upload", MCP_PATH} <= paths
    assert all(p in paths or p + "/" in paths for p in OPEN_PATHS), "an open path no route serves"
    assert all(any(p.startswith(prefix) for p in paths) for prefix in OPEN_PREFIXES)
    guarded_routes = [(m, p) for m, p in routes if not is_open(p)]
    assert len(guarded_routes) > 60  # Gradio's routes are in the walk, not only ours
    without, with_token = {}, {}
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        for method, path in guarded_routes:
            without[(method, path)] = refused_by_us(client, method, path)
            with_token[(method, path)] = refused_by_us(client, method, path, AUTH)
        wrong = client.post("/gradio_api/queue/join", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            assert client.get(path).status_code == 200, path
        # Gradio's own login check lets token holders in too (its 401 would name no realm).
        assert client.get("/gradio_api/info", headers=AUTH).status_code == 200
        assert client.get("/config", headers=AUTH).status_code == 200
    assert {route: status for route, status in without.items() if status != 401} == {}
    assert {route: status for route, status in with_token.items() if status} == {}


def test_gradio_http_api_needs_the_token(guarded: Server, image: Path) -> None:
    payload = {"data": [{"path": "https://example.invalid/x.jpg", "meta": {"_type": "gradio.FileData"}}, 3]}
    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        assert client.post("/gradio_api/call/classify", json=payload).status_code == 401
        files = {"files": (image.name, image.read_bytes(), "image/jpeg")}
        assert client.post("/gradio_api/upload", files=files).status_code == 401
        uploaded = client.post("/gradio_api/upload", files=files, headers=AUTH)
        assert uploaded.status_code == 200, uploaded.text
        data = [{"path": uploaded.json()[0], "meta": {"_type": "gradio.FileData"}}, 3]
        started = client.post("/gradio_api/call/classify", json={"data": data}, headers=AUTH)
        assert started.status_code == 200, started.text
        event = started.json()["event_id"]
        assert client.get(f"/gradio_api/call/classify/{event}").status_code == 401
        stream = client.get(f"/gradio_api/call/classify/{event}", headers=AUTH).text
    assert "event: complete" in stream and "class " in stream, stream


def test_gradio_client_sends_the_token_in_its_headers(guarded: Server, image: Path) -> None:
    with pytest.raises(Exception, match=r"(?i)login|auth|401|unauthor"):
        Client(guarded.url, verbose=False)
    ui = Client(guarded.url, headers=AUTH, verbose=False)
    result = ui.predict(handle_file(image), 3, api_name="/classify")
    assert len(result[0]["confidences"]) == 3


def mcp_call(server: Server, headers: dict[str, str] | None, image: Path) -> Any:
    encoded = "data:image/jpeg;base64," + base64.b64encode(image.read_bytes()).decode()

    async def run() -> Any:
        async with (
            httpx.AsyncClient(headers=headers, timeout=60) as http,
            streamable_http_client(server.url + MCP_PATH, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await session.call_tool("classify", {"image": encoded, "top_k": 3})

    return asyncio.run(asyncio.wait_for(run(), timeout=120))


def test_mcp_client_needs_the_token(guarded: Server, image: Path) -> None:
    with pytest.raises(BaseException) as refused:
        mcp_call(guarded, None, image)
    assert "401" in repr(refused.value) or "Unauthorized" in repr(refused.value), repr(refused.value)
    result = mcp_call(guarded, AUTH, image)
    assert not result.isError, result.content
    assert result.content[0].text.count("'confidence':") == 3


def test_http_predict_and_inference_client(guarded: Server, image: Path) -> None:
    from huggingface_hub import InferenceClient

    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        refused = client.post("/predict", content=image.read_bytes())
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
    with pytest.raises(Exception, match="401"):
        InferenceClient(model=guarded.url + "/predict").image_classification(image.read_bytes())
    answer = InferenceClient(model=guarded.url + "/predict", token=TOKEN).image_classification(
        image.read_bytes(), top_k=2
    )
    assert len(answer) == 2 and answer[0].label.startswith("class ")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


def test_page_asks_for_a_login_then_works(guarded: Server, chromium: Any, image: Path) -> None:
    """The token is the password (any user name); after the login the page's own API calls pass."""
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(guarded.url, wait_until="networkidle")
        expect(page.locator("#classify")).to_have_count(0)  # only the login form before logging in
        page.locator("input[type='text']").first.fill("anyone")
        page.locator("input[type='password']").fill(TOKEN[:-1])
        page.keyboard.press("Enter")
        expect(page.get_by_text(re.compile("incorrect credentials", re.IGNORECASE))).to_be_visible(
            timeout=30_000
        )
        page.locator("input[type='text']").first.fill("anyone")
        page.locator("input[type='password']").fill(TOKEN)
        page.keyboard.press("Enter")
        expect(page.locator("#classify")).to_be_visible(timeout=30_000)
        page.locator("#image input[type='file']").set_input_files(image)
        expect(page.locator("#image img")).to_be_visible(timeout=30_000)
        page.locator("#classify").click()
        value = page.locator("#top-classes [data-testid='label-output-value']")
        expect(value).to_have_text(re.compile(r"class \d"), timeout=60_000)
    finally:
        context.close()


def test_api_only_server(server_factory: Callable[..., Server], tiny_vit: Path, image: Path) -> None:
    server = server_factory(tiny_vit, env={"SPACE_UI": "false"})
    with server.client() as client:
        assert client.post("/predict", content=image.read_bytes()).status_code == 200
        assert client.get("/healthz").status_code == 200
        for path in ("/", "/gradio_api/info", "/config", MCP_PATH):
            assert client.get(path).status_code == 404, path
        assert client.post("/gradio_api/queue/join", json={}).status_code == 404


def test_api_only_without_mcp_is_said_at_start(tiny_vit: Path) -> None:
    env = {"SPACE_UI": "false", "SPACE_MCP": "1", "SPACE_MODEL": str(tiny_vit), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "space", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "SPACE_MCP" in result.stderr and "SPACE_UI" in result.stderr, result.stderr
