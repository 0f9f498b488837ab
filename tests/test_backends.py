"""Optimised backends: export, the accuracy guard, serving them, CPU allocation, and draft JPEG decoding.

Real models throughout: the real ImageNet model (tests/real_model.py) for top-1 agreement on real
photos, the tiny random ViT for the ViT code path and logit similarity.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from space.backends.choice import choose
from space.backends.onnx_runtime import OnnxBackend
from space.backends.pytorch import TorchBackend, TorchBf16Backend, load_network
from space.backends.registry import OPENVINO, TORCH, candidates
from space.bake import bake, guard
from space.bake.export import export_optimized
from space.bake.export import reference as torch_reference
from space.bake.guard import AccuracyError
from space.errors import ModelUnavailable
from space.model import cpu
from space.model.folder import OPTIMIZED_MANIFEST
from space.serving.images import ImageLimits, decode, draft_size
from tests.conftest import REPO, Photo, Server, classify, loaded_service, make_tiny_vit, predict_alone

# --- CPU allocation -----------------------------------------------------------------------------------


def test_cgroup_v2_quota_is_read(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu.cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu.cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota_is_read(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu.cgroup_cpu_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu.cgroup_cpu_quota(tmp_path) is None


def test_available_cpus_respects_affinity_and_quota() -> None:
    import os

    cpus = cpu.available_cpus()
    quota = cpu.cgroup_cpu_quota()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
    if quota:
        assert cpus <= max(1, -(-quota // 1))


def test_candidates_follow_cpu_features() -> None:
    """bf16 is a candidate only where the CPU computes in it; the serving image's runtimes only (no
    PyTorch); the fp32 ones, which always pass the guard and run on any x86-64 CPU, last."""
    named = [(spec.name, precision) for spec, precision in candidates({"avx512_vnni", "avx512_bf16"})]
    assert named[:2] == [("openvino", "int8"), ("openvino", "bf16")]
    assert (OPENVINO, "bf16") in candidates({"amx_bf16"})
    without = [(spec.name, precision) for spec, precision in candidates(set())]
    assert ("openvino", "bf16") not in without and len(without) == len(named) - 1
    assert without[-2:] == [("openvino", "fp32"), ("onnxruntime", "fp32")]
    assert all(spec is not TORCH for spec, _ in candidates({"avx512_bf16"}))


def test_unsupported_combinations_say_what_to_use() -> None:
    with pytest.raises(ModelUnavailable, match="openvino: fp32, bf16, int8-weights, int8"):
        choose("torch", "int8")
    with pytest.raises(ModelUnavailable, match="it supports fp32, int8"):
        choose("onnxruntime", "bf16")
    with pytest.raises(ModelUnavailable, match="use one of auto, openvino, onnxruntime, torch"):
        choose("tensorrt", "fp32")


# --- Export and accuracy guard --------------------------------------------------------------------------


def _copy(model: Path, target: Path) -> Path:
    shutil.copytree(model, target)
    return target


@pytest.mark.bake
def test_onnx_fp32_export_matches_torch_on_the_vit(tiny_vit: Path, tmp_path: Path) -> None:
    model = _copy(tiny_vit, tmp_path / "vit")
    manifest_path = export_optimized(model, model, "onnxruntime", "fp32")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["precision"] == "fp32"
    assert manifest["guard"]["passed"] and manifest["guard"]["min_cosine"] > 0.9999
    reference, _, size = torch_reference(model)
    onnx = OnnxBackend(model / manifest["file"], "fp32")
    for batch in (1, 3):  # the batch axis is dynamic: the batcher sends any size up to its maximum
        pixels = guard.guard_inputs(size, batch)
        np.testing.assert_allclose(onnx.logits(pixels), reference.logits(pixels), rtol=1e-3, atol=1e-4)


@pytest.mark.bake
def test_onnx_runs_a_lone_call_wide_and_overlapping_calls_narrow_with_the_same_answers(
    tiny_vit: Path, tmp_path: Path
) -> None:
    model = _copy(tiny_vit, tmp_path / "vit")
    manifest = json.loads(export_optimized(model, model, "onnxruntime", "fp32").read_text())
    onnx = OnnxBackend(model / manifest["file"], "fp32", threads=2, workers=2)
    pixels = guard.guard_inputs(torch_reference(model)[2], 1)
    alone = onnx.logits(pixels)
    assert onnx.runs == {"wide": 1, "narrow": 0}
    start = threading.Barrier(4)

    def overlapping(_: int) -> list[np.ndarray]:
        # The tiny model runs in microseconds, so calls may not overlap at once: go on until they have.
        start.wait()
        rows = []
        while len(rows) < 5 or (onnx.runs["narrow"] == 0 and len(rows) < 500):
            rows.append(onnx.logits(pixels))
        return rows

    with ThreadPoolExecutor(4) as pool:
        results = [row for rows in pool.map(overlapping, range(4)) for row in rows]
    assert onnx.runs["wide"] + onnx.runs["narrow"] == 1 + len(results) and onnx.runs["narrow"] > 0, onnx.runs
    for row in results:  # both sessions hold the same model: one thread or two, the same logits
        np.testing.assert_allclose(row, alone, rtol=1e-4, atol=1e-5)
    # Without overlapping calls (one worker, or one thread) a second session would only cost memory.
    for threads, workers in ((1, 2), (2, 1)):
        single = OnnxBackend(model / manifest["file"], "fp32", threads=threads, workers=workers)
        assert single._narrow is single._wide


def bake_only_modules() -> list[str]:
    """What the Dockerfile's runtime-venv stage deletes from the serving venv: only the bake step may need
    it (torch and onnx are not even installed there: tests/test_no_torch.py serves without them)."""
    text = (REPO / "Dockerfile").read_text()
    stage = text[text.index("AS runtime-venv") : text.index("AS runtime\n")]
    paths = re.findall(r'"\$sp"/([\w/]+)(?=\s|$)', stage)
    assert {"hf_xet", "onnxruntime/quantization"} <= set(paths), paths
    return [path.replace("/", ".") for path in paths]


SERVE_WITHOUT_BAKE_ONLY = """
import importlib.machinery, io, sys, time
class Deleted(importlib.machinery.PathFinder):  # as if the files were gone: find_spec() finds nothing
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in {blocked!r}):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [Deleted if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
from fastapi.testclient import TestClient
from PIL import Image
from space.settings import Settings
from space.web.app import create_app
with TestClient(create_app(Settings(model={model!r}, backend={backend!r}, mcp=True))) as client:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "not ready in 120 s"
        time.sleep(0.2)
    image = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image, "JPEG")
    answer = client.post("/predict", content=image.getvalue(), headers={{"content-type": "image/jpeg"}})
    assert answer.status_code == 200, answer.text
    assert client.get("/").status_code == 200
    print(client.get("/info").json()["model"]["backend"])
"""


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.bake
@pytest.mark.server
def test_the_server_needs_none_of_the_bake_only_packages(
    tiny_vit: Path, tmp_path: Path, backend: str
) -> None:
    model = _copy(tiny_vit, tmp_path / "vit")
    if backend == "onnxruntime":
        export_optimized(model, model, "onnxruntime", "fp32")
    script = SERVE_WITHOUT_BAKE_ONLY.format(
        blocked=tuple(bake_only_modules()), model=str(model), backend=backend
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == f"{backend}-fp32"


@pytest.mark.bake
def test_int8_keeps_top1_on_every_photo_with_the_real_model(
    real_model: Path, photos: list[Photo], tmp_path: Path
) -> None:
    model = _copy(real_model, tmp_path / "real")
    manifest = json.loads(
        export_optimized(model, model, "onnxruntime", "int8", [p.path for p in photos]).read_text()
    )
    report = manifest["guard"]
    assert report["photos"] == len(photos) and report["top1_agreement"] == 1.0, report
    assert report["min_cosine"] >= guard.MIN_COSINE
    # Served: `auto` picks the baked int8 model, and every photo still gets an accepted label.
    service = loaded_service(model)
    assert service.info is not None and service.info.backend == "onnxruntime-int8"
    cpus = cpu.available_cpus()
    # One call per CPU at once, not batched (batches do not help ONNX Runtime; concurrent calls do).
    assert vars(service.plan) == {"workers": cpus, "threads": cpus, "cpus": cpus, "max_batch": 1}
    rankings = classify(service, [photo.path for photo in photos], top_k=1)
    service.close()
    for photo, [top] in zip(photos, rankings, strict=True):
        assert top.label in photo.accepted, (photo.path.name, top)


@pytest.mark.bake
def test_bf16_guard_on_the_real_model(real_model: Path, photos: list[Photo]) -> None:
    reference, processor, size = torch_reference(real_model)
    candidate = TorchBf16Backend(load_network(real_model))
    inputs = guard.evaluation_inputs(processor, size, [p.path for p in photos])
    names = [p.path.name for p in photos]
    report = guard.judge(guard.rows(reference, inputs), guard.rows(candidate, inputs), candidate.name, names)
    assert report.photos == len(photos) and report.inputs == len(photos)  # photos, not noise
    assert report.top1_agreement == 1.0, report
    assert report.passed == (report.min_cosine >= guard.MIN_COSINE)


@pytest.mark.bake
def test_guard_refuses_a_model_that_drifts(tiny_vit: Path, tmp_path: Path) -> None:
    # A different set of weights for the same architecture: the guard must see it is not the same model.
    other = make_tiny_vit(tmp_path / "other")
    reference, processor, size = torch_reference(tiny_vit)
    drifted = TorchBackend(load_network(other))
    inputs = guard.evaluation_inputs(processor, size, [])  # no photos: the seeded noise inputs
    report = guard.judge(guard.rows(reference, inputs), guard.rows(drifted, inputs), drifted.name)
    assert not report.passed and report.min_cosine < guard.MIN_COSINE
    # Through the export: an impossible bound is refused, and nothing is left behind to be served.
    out = tmp_path / "out"
    with pytest.raises(AccuracyError, match="beyond the bound"):
        export_optimized(tiny_vit, out, "onnxruntime", "int8", min_cosine=1.000001)
    assert not list(out.glob("model-*.onnx")) and not (out / OPTIMIZED_MANIFEST).exists()


# --- Serving --------------------------------------------------------------------------------------------


def _predict(server: Server, data: bytes) -> list[dict[str, object]]:
    with server.client() as http:
        response = http.post("/predict", content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.bake
@pytest.mark.server
def test_server_serves_the_baked_onnx_model_like_torch(
    server_factory: Callable[..., Server],
    vit_server: Server,
    tiny_vit: Path,
    tmp_path: Path,
    photos: list[Photo],
) -> None:
    model = _copy(tiny_vit, tmp_path / "vit")
    export_optimized(model, model, "onnxruntime", "fp32")
    onnx = server_factory(model, env={"SPACE_TOP_K": "3"})
    torch = vit_server  # the same tiny ViT, not baked: served by fp32 PyTorch
    with onnx.client() as http:
        info = http.get("/info").json()["model"]
    assert info["backend"] == "onnxruntime-fp32" and info["optimized"]["guard"]["passed"]
    with torch.client() as http:
        assert http.get("/info").json()["model"]["backend"] == "torch-fp32"
    data = photos[0].path.read_bytes()
    got, want = _predict(onnx, data), _predict(torch, data)
    assert [p["label"] for p in got] == [p["label"] for p in want]
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-4)


def _serve_fails(model: Path, env: dict[str, str]) -> str:
    """``python -m space serve`` that must stop at start-up: its one error line (stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "space", "serve", "--model", str(model), "--port", "0"],
        cwd=REPO,
        env={**_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.mark.bake
@pytest.mark.server
def test_the_server_never_converts_a_model_it_stops_with_how_to_bake_it(
    tiny_vit: Path, tmp_path: Path
) -> None:
    # Nothing baked, ONNX Runtime int8 asked for: no export at start-up, one line saying how to bake it.
    line = _serve_fails(tiny_vit, {"SPACE_BACKEND": "onnxruntime", "SPACE_PRECISION": "int8"})
    assert "holds no baked model-int8.onnx" in line and "never converts a model" in line, line
    assert "python -m space bake" in line and "--optimize onnxruntime --precision int8" in line, line
    assert not list(tiny_vit.glob("*.onnx"))
    # A lean ONNX bake holds no PyTorch weights: asking for torch says so, and how to bake for it.
    lean = tmp_path / "lean"
    bake(str(tiny_vit), lean, optimize="onnxruntime", precision="fp32")
    assert not list(lean.glob("*.safetensors"))
    line = _serve_fails(lean, {"SPACE_BACKEND": "torch"})
    assert "needs PyTorch weights" in line and "--optimize none" in line, line


@pytest.mark.server
def test_an_impossible_backend_choice_fails_with_a_clear_line(tiny_vit: Path, photos: list[Photo]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "space", "predict", "--model", str(tiny_vit), str(photos[0].path)],
        cwd=REPO,
        env={**_env(), "SPACE_BACKEND": "torch", "SPACE_PRECISION": "int8"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "SPACE_PRECISION='int8' is not available with SPACE_BACKEND=torch" in result.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SPACE_")}


# --- Large photos: draft JPEG decoding ------------------------------------------------------------------


def _jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def test_draft_decoding_keeps_top1_on_real_and_12mp_photos(real_model: Path, photos: list[Photo]) -> None:
    service = loaded_service(real_model, backend="torch", precision="fp32")
    model = service.model
    drafts = service.loaded.draft_size
    assert drafts == draft_size(model.processor) and min(drafts) >= 2 * 224
    limits = ImageLimits(max_pixels=50_000_000)
    samples = [(p.path.name, p.path.read_bytes(), p.accepted) for p in photos if p.path.suffix == ".jpg"]
    with Image.open(next(p.path for p in photos if p.path.name == "lion.jpg")) as lion:
        big = _jpeg(lion.convert("RGB").resize((4000, 3000), Image.LANCZOS))
    samples.append(("lion-12mp.jpg", big, ("lion, king of beasts, Panthera leo",)))
    drafted = decode(big, limits, drafts)
    assert drafted.width < 4000 and min(drafted.size) >= min(drafts)  # really reduced
    served = classify(service, [data for _, data, _ in samples], top_k=1)
    service.close()
    for (name, data, accepted), [top] in zip(samples, served, strict=True):
        full = predict_alone(model, decode(data, limits), 1)[0]
        assert top.label == full.label, name
        assert top.label in accepted, (name, top)
