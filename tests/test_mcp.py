"""``SPACE_MCP=1``: classification as an MCP tool, used through the official MCP client over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Photo, Server

MCP_PATH = "/gradio_api/mcp/"


@pytest.fixture(scope="module")
def mcp_server(server_factory: Callable[..., Server], real_model: Path) -> Server:
    return server_factory(real_model, env={"SPACE_MCP": "1"})


def with_session(server: Server, work: Callable[[ClientSession], Any]) -> Any:
    """Run ``work(session)`` in an initialised MCP session with ``server`` (streamable HTTP transport)."""

    async def run() -> Any:
        async with (
            streamable_http_client(server.url + MCP_PATH) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(asyncio.wait_for(run(), timeout=120))


def data_url(path: Path) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def test_lists_the_classify_and_explain_tools_with_clear_schemas(mcp_server: Server) -> None:
    tools = with_session(mcp_server, lambda session: session.list_tools()).tools
    # Page furniture (examples, model line, the class picker's filling) is not a tool.
    assert [tool.name for tool in tools] == ["classify", "explain"]
    tool, explain = tools
    assert explain.description.startswith("Show where the model looked")
    assert set(explain.inputSchema["properties"]) == {"image", "target"}
    assert "class index" in explain.inputSchema["properties"]["target"]["description"]
    assert tool.description.startswith("Classify an image")
    properties = tool.inputSchema["properties"]
    assert set(properties) == {"image", "top_k"} and tool.inputSchema["required"] == ["image"]
    assert "URL" in properties["image"]["description"]
    assert properties["top_k"]["type"] == "number" and "1 to 20" in properties["top_k"]["description"]


def test_classify_tool_answers_with_the_top_classes(mcp_server: Server, photos: list[Photo]) -> None:
    cat = next(p for p in photos if p.path.name == "cat_chelsea.png")

    async def call(session: ClientSession) -> Any:
        return await session.call_tool("classify", {"image": data_url(cat.path), "top_k": 3})

    result = with_session(mcp_server, call)
    assert not result.isError, result.content
    text = result.content[0].text
    assert "Inference time:" in text
    # Gradio returns the outputs' Python repr: the Label value ({'label':..., 'confidences': [...]}).
    top = text.split("'label': '", 1)[1].split("'", 1)[0]
    assert top in cat.accepted, text
    assert text.count("'confidence':") == 3, text


def test_explain_tool_answers_with_the_label_score_and_grid(mcp_server: Server, photos: list[Photo]) -> None:
    lion = next(p for p in photos if p.path.name == "lion.jpg")

    async def call(session: ClientSession) -> Any:
        return await session.call_tool("explain", {"image": data_url(lion.path), "target": ""})

    result = with_session(mcp_server, call)
    assert not result.isError, result.content
    texts = [item.text for item in result.content if getattr(item, "text", None)]
    summary = next(text for text in texts if "'grid'" in text or '"grid"' in text)
    assert "occlusion" in summary and "'label': 'lion" in summary.replace('"', "'"), summary
    assert summary.count("[") >= 8  # the 7 x 7 grid: a list of seven lists
    assert any(getattr(item, "type", "") == "image" or "image" in str(item) for item in result.content)


def test_classify_tool_reports_a_bad_image_readably(mcp_server: Server) -> None:
    junk = "data:image/jpeg;base64," + base64.b64encode(b"this is not a picture " * 8).decode()

    async def call(session: ClientSession) -> Any:
        return await session.call_tool("classify", {"image": junk, "top_k": 3})

    result = with_session(mcp_server, call)
    assert result.isError
    message = result.content[0].text
    assert "not an image" in message and "JPEG" in message and "Traceback" not in message
    assert "Traceback" not in mcp_server.log()


def test_mcp_is_off_by_default(real_server: Server) -> None:
    response = real_server.client().post(
        MCP_PATH,
        content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
    )
    assert response.status_code in (404, 405), response.text[:300]
