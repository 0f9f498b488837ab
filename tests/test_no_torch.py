"""Serving without PyTorch: lean bakes of the real model (ONNX Runtime fp32 and int8, and the bake's own
choice, ``--optimize auto``: the fastest that passes the guard here, OpenVINO or ONNX Runtime) each as a
real ``python -m space serve`` in which torch and onnx cannot be imported, API, page and MCP included,
with answers that match the PyTorch path: every committed photo keeps its top-1 label.

"Cannot be imported" as if not installed: a ``sitecustomize.py`` on PYTHONPATH replaces the path finder
with one that finds nothing for ``torch``, ``torchvision`` and ``onnx`` (transformers then falls back to
its PIL/numpy image processors, which it also uses with torch when torchvision is absent, as here).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gradio_client import Client, handle_file
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from space.backends.registry import candidates
from space.bake import bake
from space.bake.calibration import CALIBRATION_SIZE, calibration_photos
from space.bake.openvino_export import VALIDATION_SIZE
from space.serving.explain import DEFAULT
from tests.conftest import PHOTOS, REPO, Photo, Server, read_photos

pytestmark = [pytest.mark.server, pytest.mark.bake]

BLOCKED = ("torch", "torchvision", "onnx")
SITECUSTOMIZE = f'''
import importlib.machinery, os, sys
BLOCKED = {BLOCKED!r}
class _NotInstalled(importlib.machinery.PathFinder):
    """Finds nothing for the blocked packages: importing them fails as if they were not installed."""
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in BLOCKED):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [_NotInstalled if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
if os.environ.get("NO_TORCH_MARKER"):
    open(os.environ["NO_TORCH_MARKER"], "a").write(f"{{os.getpid()}}\\n")
'''
LEAN = {"config.json", "preprocessor_config.json", "optimized.json", "vit-space-manifest.json"}


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment in which a Python process cannot import torch or onnx; the marker lists its pids."""
    folder = tmp_path_factory.mktemp("no-torch")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "NO_TORCH_MARKER": str(folder / "started")}


BAKES = {"onnxruntime-fp32": ("onnxruntime", "fp32"), "onnxruntime-int8": ("onnxruntime", "int8")}
BAKES["auto"] = ("auto", "auto")  # the default: measured here, among those that pass the guard


@pytest.fixture(scope="module")
def lean_bakes(real_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real model baked by the bake step for each of :data:`BAKES`, with the photos as examples (the
    accuracy guard's photos: so static int8 calibrates on others)."""
    root = tmp_path_factory.mktemp("lean")
    for name, (backend, precision) in BAKES.items():
        examples = {"examples_from": PHOTOS, "examples_dir": root / f"examples-{name}"}
        # A quarter of a second per speed figure: enough to rank the candidates, all that is checked here;
        # static int8's accuracy control may put back 4 groups, not 12: one ranking round, not two (50 s).
        bake(
            str(real_model),
            root / name,
            optimize=backend,
            precision=precision,
            measure_seconds=0.25,
            float_groups=4,
            **examples,
        )
    return {name: root / name for name in BAKES}


def served_name(folder: Path) -> str:
    chosen = json.loads((folder / "optimized.json").read_text())
    return f"{chosen['backend']}-{chosen['precision']}"


def test_the_blocker_makes_torch_and_onnx_unimportable(no_torch_env: dict[str, str]) -> None:
    script = (
        "import importlib, importlib.util\n"
        f"for name in {BLOCKED!r}:\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(name + ' imported')\n"
        "import onnxruntime, openvino, transformers, gradio\n"
        "print('ok')\n"
    )
    env = {**os.environ, **no_torch_env}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_lean_bake_holds_only_what_is_served(lean_bakes: dict[str, Path]) -> None:
    for folder in lean_bakes.values():
        backend, _, precision = served_name(folder).partition("-")
        served = {f"openvino-{precision}.xml", f"openvino-{precision}.bin"}
        if backend == "onnxruntime":
            served = {f"model-{precision}.onnx"}
        assert {p.name for p in folder.iterdir()} == {*LEAN, *served}, folder.name


def test_the_default_bake_is_the_fastest_that_passes_the_guard(lean_bakes: dict[str, Path]) -> None:
    """``--optimize auto`` measured every candidate that passed the guard and kept the fastest; static
    int8 was calibrated only on photos the guard did not evaluate on (different bytes)."""
    chosen = json.loads((lean_bakes["auto"] / "optimized.json").read_text())
    measured = chosen["measured"]
    assert len(measured) + len(chosen["refused"]) == len(candidates()), chosen
    fastest = max(measured, key=lambda item: item["speed"]["images_per_s"])
    assert (chosen["backend"], chosen["precision"]) == (fastest["backend"], fastest["precision"])
    assert chosen["why"].startswith(f"the fastest of {len(measured)} that passed the accuracy guard")
    assert chosen["guard"]["passed"] and chosen["guard"]["photos"] == len(read_photos())
    assert all(item["min_cosine"] >= chosen["guard"]["bound_cosine"] for item in measured)
    tried = {(item["backend"], item["precision"]) for item in measured}
    assert ("openvino", "int8") in tried or any(r.startswith("openvino int8") for r in chosen["refused"])
    calibration = chosen["calibration"]
    assert calibration["inputs"] == CALIBRATION_SIZE and calibration["photos"], calibration
    static = chosen["static_int8"]  # with accuracy control, validated on crops the guard never sees
    assert static["method"] == "nncf.quantize_with_accuracy_control" and static["float_groups_allowed"] == 4
    assert static["validation_inputs"] == VALIDATION_SIZE, static
    assert 0 < static["int8_ops"] <= static["heavy_ops"], static  # int8 activations, counted in the graph
    guard_bytes = {p.path.read_bytes() for p in read_photos()}
    for path in calibration_photos(None):
        assert (path.name in calibration["photos"]) == (path.read_bytes() not in guard_bytes), path.name


def mcp_classify(server: Server, photo: Path) -> tuple[list[str], str]:
    """The MCP tools' names and the ``classify`` tool's answer for ``photo``, over streamable HTTP."""
    image = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()

    async def run() -> tuple[list[str], str]:
        async with (
            streamable_http_client(server.url + "/gradio_api/mcp/") as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = [tool.name for tool in (await session.list_tools()).tools]
            result: Any = await session.call_tool("classify", {"image": image, "top_k": 3})
            assert not result.isError, result.content
            return tools, result.content[0].text

    return asyncio.run(asyncio.wait_for(run(), timeout=120))


@pytest.mark.parametrize("name", list(BAKES))
def test_lean_bakes_serve_api_page_and_mcp_without_torch(
    name: str,
    lean_bakes: dict[str, Path],
    no_torch_env: dict[str, str],
    server_factory: Callable[..., Server],
    real_server: Server,
    photos: list[Photo],
) -> None:
    marker = Path(no_torch_env["NO_TORCH_MARKER"])
    marker.unlink(missing_ok=True)
    server = server_factory(lean_bakes[name], env={**no_torch_env, "SPACE_MCP": "1"})
    assert str(server.process.pid) in marker.read_text().split()  # the blocker ran in the server
    with server.client() as http, real_server.client() as reference:
        info = http.get("/info").json()["model"]
        assert info["backend"] == served_name(lean_bakes[name]) and "torch" not in info["versions"], info
        assert http.get("/").status_code == 200
        for photo in photos:
            data = photo.path.read_bytes()
            got = http.post("/predict", content=data, params={"top_k": 5}).json()
            want = reference.post("/predict", content=data, params={"top_k": 5}).json()
            assert got[0]["label"] in photo.accepted and got[0]["label"] == want[0]["label"], (photo, got)
            if info["backend"].endswith("-fp32"):  # the same model: the PyTorch path's answer, to 1e-4
                assert [g["label"] for g in got] == [w["label"] for w in want], photo
                np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-4)
        explained = http.post("/explain", content=photos[0].path.read_bytes()).json()
        assert explained["label"] in photos[0].accepted and explained["method"] == DEFAULT.name
    lion = next(p for p in photos if p.path.name == "lion.jpg")
    shown, _ = Client(server.url, verbose=False).predict(handle_file(str(lion.path)), 3, api_name="/classify")
    assert shown["label"] in lion.accepted, shown
    tools, text = mcp_classify(server, lion.path)
    assert tools == ["classify", "explain"] and any(label in text for label in lion.accepted), text
    assert "Traceback" not in server.log()
