"""OpenVINO: each precision baked by the real export (ONNX -> OpenVINO, NNCF for int8) and served over
HTTP; static int8 calibrated on real photos that the guard does not evaluate on, with accuracy control
in a child process; the page's queue and the API sharing one batcher."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file

from space.backends.openvino_runtime import OpenVinoBackend
from space.backends.registry import OPENVINO
from space.bake import make_lean
from space.bake.calibration import calibration_inputs, calibration_photos
from space.bake.export import export_optimized
from space.bake.openvino_export import VALIDATION_SIZE, QuantizationFailed, quantize
from space.model.cpu import cpu_flags
from space.model.folder import has_pytorch_weights
from space.serving.pixels import ONE_PASS
from space.settings import Settings
from space.web.app import create_app
from tests.conftest import PHOTOS, TEST_CALIBRATION_SIZE, Photo, Server, wait_until_ready

pytestmark = pytest.mark.bake


@pytest.fixture(scope="module")
def openvino_bakes(tiny_vit: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny ViT exported for every OpenVINO precision. Its random logits are near ties, so the guard
    here checks the export runs and stays close (cosine 0.9) rather than a real model's bound; static
    int8 calibrates on 32 crops of five of the photos."""
    root = tmp_path_factory.mktemp("openvino")
    calibration = root / "calibration"
    calibration.mkdir()
    for photo in sorted(PHOTOS.glob("*.jpg"))[:5]:
        shutil.copy(photo, calibration)
    bakes = {}
    for precision in OPENVINO.precisions:
        folder = root / precision
        shutil.copytree(tiny_vit, folder)
        export_optimized(
            folder,
            folder,
            "openvino",
            precision,
            min_cosine=0.9,
            min_top1=0.0,
            calibration_dir=calibration,
            calibration_size=TEST_CALIBRATION_SIZE,
        )
        bakes[precision] = folder
    return bakes


def test_each_precision_is_exported_and_described(openvino_bakes: dict[str, Path]) -> None:
    for precision, folder in openvino_bakes.items():
        chosen = json.loads((folder / "optimized.json").read_text())
        assert (chosen["backend"], chosen["precision"]) == ("openvino", precision)
        assert chosen["file"] == f"openvino-{precision}.xml" and (folder / chosen["file"]).is_file()
        assert (folder / f"openvino-{precision}.bin").is_file() and "measured" not in chosen  # asked: kept
        assert {p.name for p in folder.glob("openvino-*")} == {f"openvino-{precision}.bin", chosen["file"]}
        if precision == "int8":
            calibration = chosen["calibration"]
            assert calibration["inputs"] == TEST_CALIBRATION_SIZE and len(calibration["photos"]) == 5
            static = chosen["static_int8"]  # accuracy control measured it on crops the guard never sees
            assert static["method"] == "nncf.quantize_with_accuracy_control" and static["transformer"]
            assert static["validation_inputs"] == VALIDATION_SIZE and static["seconds"] > 0, static
            assert static["calibration_inputs"] == TEST_CALIBRATION_SIZE
            # Quantising everything gave this tiny model 0.984 on its validation crops; NNCF put an
            # operation back in float until it held the bound (drop <= MAX_DROP from fp32's 1.0).
            assert static["validation_min_cosine"] >= 0.99 and static["float_groups_allowed"] > 0, static
            assert 0 < static["int8_ops"] <= static["heavy_ops"], static  # counted in the saved graph
        else:
            assert "calibration" not in chosen and "static_int8" not in chosen


def test_int8_files_are_smaller_and_quantised(openvino_bakes: dict[str, Path]) -> None:
    sizes = {p: (f / f"openvino-{p}.bin").stat().st_size for p, f in openvino_bakes.items()}
    assert sizes["fp32"] == sizes["bf16"]  # bf16 is a hint at load time, not a different file
    # Static int8 may keep some operations in float (accuracy control), each a large share of a tiny model.
    assert sizes["int8-weights"] < sizes["fp32"] / 2 and sizes["int8"] < sizes["fp32"], sizes
    xml = (openvino_bakes["int8"] / "openvino-int8.xml").read_text()
    assert 'type="FakeQuantize"' in xml or "FakeConvert" in xml  # activations quantised too (static)
    weights_only = (openvino_bakes["int8-weights"] / "openvino-int8-weights.xml").read_text()
    assert 'type="FakeQuantize"' not in weights_only


def test_openvino_weights_are_not_taken_for_pytorch_weights(openvino_bakes: dict[str, Path]) -> None:
    folder = openvino_bakes["fp32"]
    assert has_pytorch_weights(folder)  # the copied model.safetensors
    make_lean(folder, {"backend": "openvino"})
    assert not has_pytorch_weights(folder) and (folder / "openvino-fp32.bin").is_file()


def test_bf16_reports_what_this_cpu_computes_in(openvino_bakes: dict[str, Path]) -> None:
    folder = openvino_bakes["bf16"]
    backend = OpenVinoBackend(folder / "openvino-bf16.xml", "bf16", threads=1)
    has_bf16 = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert backend.inference_precision == ("bf16" if has_bf16 else "f32"), backend.inference_precision
    exact = OpenVinoBackend(folder / "openvino-bf16.xml", "fp32", threads=1)
    assert exact.inference_precision == "f32"


def test_every_precision_serves_over_http(
    openvino_bakes: dict[str, Path], server_factory: Callable[..., Server], photos: list[Photo]
) -> None:
    """Each bake served as a user would serve it: /info names it, and the answers are softmaxed scores
    that came through the batcher. The servers start at once, so that their start-ups overlap."""
    servers = {p: server_factory(folder, wait_ready=False) for p, folder in openvino_bakes.items()}
    for precision, server in servers.items():
        wait_until_ready(server, timeout=300)
        with server.client() as http:
            info = http.get("/info").json()["model"]
            assert info["backend"] == f"openvino-{precision}" and "openvino" in info["versions"], info
            assert info["optimized"]["precision"] == precision
            got = http.post("/predict", content=photos[0].path.read_bytes(), params={"top_k": 10}).json()
        assert len(got) == 10 and abs(sum(g["score"] for g in got) - 1) < 1e-3, got
        metrics = server.client().get("/metrics").text
        assert re.search(r"^space_batch_size_count\s+[1-9]", metrics, re.M), (
            precision
        )  # served by the batcher
        assert info["preprocessing"] == ONE_PASS, info
        # Memory: torch (which transformers imports whenever it is installed) is kept out of a server that
        # another runtime serves, and the weights file's pages are let go once OpenVINO holds its own copy.
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "libtorch" not in maps, precision
        assert resident_kb(server.process.pid, f"openvino-{precision}.bin") < 1024, precision


def resident_kb(pid: int, name: str) -> int:
    """How much of the mapped file ``name`` is resident in process ``pid`` (kB, from smaps)."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.endswith("/" + name)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_a_failing_or_slow_quantiser_refuses_the_candidate_with_its_reason(tmp_path: Path) -> None:
    """Static int8 runs in a child process: its error, or running past the time limit, is a clear
    failure of that candidate (the bake goes on with the others), never a crash of the bake."""
    pixels = np.zeros((1, 1, 3, 8, 8), np.float32)
    missing = tmp_path / "missing.onnx"
    with pytest.raises(QuantizationFailed, match=r"missing\.onnx"):
        quantize(missing, tmp_path / "int8.xml", list(pixels), pixels[0], np.ones((1, 2)))
    with pytest.raises(QuantizationFailed, match=r"took longer than 0\.5 s"):
        quantize(missing, tmp_path / "int8.xml", list(pixels), pixels[0], np.ones((1, 2)), time_limit=0.5)


def test_calibration_never_holds_a_guard_photo(tmp_path: Path) -> None:
    """A photo with the same bytes as one the guard evaluates on is left out, whatever its name."""
    (tmp_path / "renamed.jpg").write_bytes((PHOTOS / "lion.jpg").read_bytes())
    shutil.copy(PHOTOS / "zebra.jpg", tmp_path)
    (tmp_path / "notes.txt").write_text("not a photo")
    kept = calibration_photos(tmp_path, evaluation=[PHOTOS / "lion.jpg"])
    assert [p.name for p in kept] == ["zebra.jpg"]
    bundled = calibration_photos(None)  # gradio's photos: cheetah.jpg and lion.jpg are also test photos
    left = calibration_photos(None, evaluation=sorted(PHOTOS.glob("*.jpg")))
    assert len(left) < len(bundled) and {"cheetah.jpg", "lion.jpg"} <= {p.name for p in bundled}
    assert not {"cheetah.jpg", "lion.jpg"} & {p.name for p in left}


def test_calibration_inputs_are_seeded_crops_of_the_photos(tiny_vit: Path) -> None:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_vit)
    photos = [PHOTOS / "zebra.jpg", PHOTOS / "orange.jpg"]
    first = calibration_inputs(photos, processor, count=6)
    again = calibration_inputs(photos, processor, count=6)
    assert len(first) == 6 and first[0].shape == (1, 3, 32, 32) and first[0].dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))  # the same every bake
    assert len({a.tobytes() for a in first}) == 6  # six different crops
    with pytest.raises(ValueError, match="real images"):
        calibration_inputs([], processor)


def test_page_users_run_at_once_like_api_users(
    openvino_bakes: dict[str, Path], server_factory: Callable[..., Server], photos: list[Photo]
) -> None:
    """The page's Classify event admits as many users at once as the API (SPACE_MAX_IN_FLIGHT), so they
    meet in the same batcher; Gradio's default would run them one at a time. Eight at once all answer."""
    app = create_app(Settings(model=str(openvino_bakes["int8-weights"]), max_in_flight=12))
    (page,) = [route.app for route in app.routes if hasattr(getattr(route, "app", None), "get_blocks")]
    blocks = page.get_blocks()  # type: ignore[attr-defined]
    (classify_event,) = [fn for fn in blocks.fns.values() if fn.api_name == "classify"]
    assert classify_event.concurrency_limit == "default" and blocks._queue.default_concurrency_limit == 12
    server = server_factory(openvino_bakes["int8-weights"], env={"SPACE_MAX_IN_FLIGHT": "12"})
    start = threading.Barrier(8)

    def classify(photo: Photo) -> str:
        client = Client(server.url, verbose=False)
        start.wait()
        shown, _ = client.predict(handle_file(str(photo.path)), 3, api_name="/classify")
        return shown["label"]

    with ThreadPoolExecutor(8) as pool:
        labels = list(pool.map(classify, photos[:8]))
    assert all(label.startswith("class ") for label in labels), labels
