"""Explanation maps people can trust, on the real ImageNet model and real photos.

Through the real server (``/explain`` for the maps, the v2 protocol for the scores along the curves): the
hottest cell lands on the object on busy backgrounds, and deleting the map's cells hottest-first drops the
score faster than random orders (the measure of space/bench/explanations.py, which the bench prints for
every method). In process: the map's rules (cells the processor crops away, tiny images, targets, the
overlay and its scale) and every baked runtime's map against fp32's. The HTTP details (bodies, errors,
bounds, the token) are in test_explain_api.py; the page and MCP in test_browser.py and test_mcp.py. The
figures are printed (pytest -s); docs/explanations.md has them."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from space.bake.export import export_optimized
from space.bench import explanations as measure
from space.errors import BadParameter
from space.serving.explain import DEFAULT, Explanation, fill_colour
from space.serving.images import read_file
from space.serving.overlay import drawn, legend, overlay
from space.serving.params import EXPLAIN, Params, parse, target_index
from space.serving.service import ClassificationService
from tests.conftest import Photo, loaded_service, predict_alone

MIN_HITS = 0.8  # the hottest cell on the object, of the busy-background placements
MIN_CONTRAST = 0.9  # the map hotter on the object than off it
MIN_BELOW_RANDOM = 0.8  # the deletion area below the random orders', of the photos
# Backend agreement bounds, Pearson r of each grid with fp32 PyTorch's: bf16's probabilities are coarser,
# and small drops differ most (docs/explanations.md has the figures).
MIN_PEARSON = {"onnxruntime-fp32": 0.99, "onnxruntime-int8": 0.95, "torch-bf16": 0.8}


@pytest.fixture(scope="module")
def served(real_model: Path) -> Iterator[ClassificationService]:
    service = loaded_service(real_model)
    yield service
    service.close()


@pytest.fixture(scope="module")
def objects(served: ClassificationService, photos: list[Photo]) -> list[tuple[str, Image.Image, str]]:
    """The committed photos the model gets right, with that label (all 14 but none, see test_api)."""
    found = []
    for photo in photos:
        with Image.open(photo.path) as image:
            picture = image.convert("RGB")
        picture.thumbnail((measure.CANVAS, measure.CANVAS))
        [top] = predict_alone(served.model, picture, 1)
        if top.label in photo.accepted:
            found.append((photo.path.name, picture, top.label))
    assert len(found) >= 12, [name for name, _, _ in found]
    return found


@pytest.fixture(scope="module")
def exported(real_model: Path, photos: list[Photo], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real model baked for ONNX Runtime fp32, once: what a bake serves, and several times faster than
    PyTorch for this model, so that the measures' thousands of passes take seconds."""
    folder = tmp_path_factory.mktemp("exported") / "fp32"
    shutil.copytree(real_model, folder)
    export_optimized(folder, folder, "onnxruntime", "fp32", [p.path for p in photos])
    return folder


@pytest.fixture(scope="module")
def baked(exported: Path) -> Iterator[ClassificationService]:
    service = loaded_service(exported)
    yield service
    service.close()


def served_map(service: ClassificationService) -> measure.Explain:
    """The service's own explanations (batcher and all) as the measure's callable."""
    return lambda image, label: explain(service, image, label).grid


def explain(service: ClassificationService, image: Image.Image, target: str | None = None) -> Explanation:
    """The service's own explanation of ``image`` (decoded already), from a test's thread."""
    return asyncio.run(service.explain(image, Params(target=target)))[0]


def read(service: ClassificationService, path: Path) -> Image.Image:
    return read_file(path, service.limits, service.loaded.draft_size)


def test_the_map_finds_objects_on_busy_backgrounds(
    baked: ClassificationService, objects: list[tuple[str, Image.Image, str]]
) -> None:
    """Each photo cut to a soft oval and pasted at two seeded places on another photo blurred past
    recognition: the hottest cell is on it in at least 80% of the placements, and the map is hotter on it
    than off it in at least 90%."""
    placements = measure.busy_backgrounds(objects, seed=17)
    found = [measure.localised(served_map(baked)(p.image, p.label), p.mask) for p in placements]
    hits, contrast = sum(h for h, _ in found) / len(found), sum(c for _, c in found) / len(found)
    missed = [p.name for p, (hit, _) in zip(placements, found, strict=True) if not hit]
    print(f"\nbusy backgrounds: {len(found)} placements, hottest cell on the object {hits:.0%}, hotter on it "
          f"than off it {contrast:.0%}; missed {missed}")  # fmt: skip
    assert hits >= MIN_HITS and contrast >= MIN_CONTRAST, (hits, contrast, missed)


def test_deleting_the_hottest_cells_first_drops_the_score_faster_than_random(
    baked: ClassificationService, objects: list[tuple[str, Image.Image, str]]
) -> None:
    """The deletion curve (cells blurred hottest-first, as the map removes them; the class's score at 17
    points): its area is below the mean of eight random orders' on at least 80% of the committed photos.
    The bench adds insertion and deletion to black (docs/explanations.md)."""
    score = measure.scorer(baked.model)
    curves = [
        measure.curves(name, image, label, served_map(baked)(image, label), score, seed, ["deletion"])
        for seed, (name, image, label) in enumerate(objects)
    ]
    below = [c.name for c in curves if c.deletion < c.random_deletion]
    print()
    for c in curves:
        print(f"{c.name:16} deletion {c.deletion:.3f} (random {c.random_deletion:.3f})")
    assert len(below) >= MIN_BELOW_RANDOM * len(curves), [c for c in curves if c.name not in below]
    assert all(0 <= c.deletion <= 1 and 0 <= c.random_deletion <= 1 for c in curves)


def test_cells_the_processor_crops_away_cost_no_pass_and_get_zero(
    served: ClassificationService, photos: list[Photo]
) -> None:
    """A wide panorama: the centre crop drops its left and right ends, so those columns are 0; the windows
    wholly in them are not run."""
    image = read(served, photos[0].path).resize((320, 200))
    explanation = explain(served, image)
    grid = explanation.grid
    assert np.all(grid[:, 0] == 0) and np.all(grid[:, -1] == 0)
    assert explanation.forward_passes == DEFAULT.passes(7)  # every window has a column the model sees
    assert grid.max() == pytest.approx(1.0)
    square = explain(served, read(served, photos[0].path).resize((200, 200)))
    assert square.forward_passes == 1 + 6 * 6 and (square.grid[:, 0] > 0).any()


def test_targets_labels_indices_and_mistakes(served: ClassificationService) -> None:
    labels = served.labels
    assert target_index(None, labels) is None  # the top class
    assert target_index("zebra", labels) == 340
    assert target_index("ZEBRA", labels) == 340
    assert target_index("340", labels) == 340
    assert target_index(7, labels) == 7
    for bad, words in (("unicorn", "GET /labels"), (1000, "0 to 999"), (-1, "0 to 999"), ("-1", "0 to 999")):
        with pytest.raises(BadParameter, match=words):
            target_index(bad, labels)
    for bad in (2.5, True, [1]):  # not a label or an index at all: the parameter's own check
        with pytest.raises(BadParameter, match="class index"):
            parse({"target": bad}, accepted=EXPLAIN)
    # The mean colour of a normalising processor, mid-grey for one that does not normalise.
    assert fill_colour(served.model.processor) == (128, 128, 128)


def test_overlay_keeps_cold_pixels_colours_hot_ones_and_shows_its_scale() -> None:
    image = Image.new("RGB", (140, 70), (0, 0, 255))
    grid = np.zeros((7, 7))
    grid[3, 6] = 1.0
    out = np.asarray(overlay(image, grid))
    assert out.shape == (70, 140, 3)
    assert tuple(out[5, 5]) == (0, 0, 255)  # far from the hot cell: untouched
    assert out[35, 135, 0] > 120 and out[35, 135, 2] < 140  # the hot cell: red laid over the blue
    shown = Explanation("zebra", 340, 0.9, grid, DEFAULT.passes(7), 1.2, DEFAULT.name)
    scaled = np.asarray(drawn(image, shown))
    assert scaled.shape[0] > 70 + 30 and scaled.shape[1] >= 320  # a strip under the picture
    bar = scaled[70 + 12, 92:258]  # the colour scale: from white ("no effect") to red ("most")
    assert bar[0].min() > 240 and bar[-1][0] > 200 and bar[-1][2] < 120, (bar[0], bar[-1])
    text = legend(shown)
    assert (
        "zebra" in text and DEFAULT.name in text and "37 passes" in text and "not where the object is" in text
    )


@pytest.mark.bake
def test_every_baked_backend_agrees_with_fp32(
    real_model: Path, photos: list[Photo], baked: ClassificationService, tmp_path: Path
) -> None:
    """The bake's runtimes (ONNX Runtime fp32 and int8, PyTorch bf16) give the fp32 map, within a bound."""
    chosen = [p for p in photos if p.path.name in ("lion.jpg", "zebra.jpg", "orange.jpg", "cat_chelsea.png")]
    runtimes = {"torch-fp32": loaded_service(real_model, backend="torch", precision="fp32")}
    runtimes["torch-bf16"] = loaded_service(real_model, backend="torch", precision="bf16")
    folder = tmp_path / "int8"
    shutil.copytree(real_model, folder)
    export_optimized(folder, folder, "onnxruntime", "int8", [p.path for p in photos])
    runtimes["onnxruntime-int8"] = loaded_service(folder)  # auto: serves what the bake chose
    runtimes["onnxruntime-fp32"] = baked
    try:
        maps: dict[str, list[np.ndarray]] = {name: [] for name in runtimes}
        for name, service in runtimes.items():
            assert service.info is not None and service.info.backend == name
            for photo in chosen:
                maps[name].append(explain(service, read(service, photo.path)).grid.ravel())
        agreement = {
            name: [
                round(float(np.corrcoef(a, b)[0, 1]), 3)
                for a, b in zip(maps["torch-fp32"], grids, strict=True)
            ]
            for name, grids in maps.items()
            if name != "torch-fp32"
        }
        print(
            f"\nmap agreement with torch-fp32, Pearson r per photo {[p.path.name for p in chosen]}:",
            agreement,
        )
        assert all(min(r) >= MIN_PEARSON[name] for name, r in agreement.items()), agreement
    finally:
        for service in runtimes.values():
            if service is not baked:
                service.close()


def test_an_image_smaller_than_the_grid_is_explained(served: ClassificationService) -> None:
    """A 3 x 2 pixel image: most windows are empty (no pass); the answer is still a 7 x 7 map."""
    image = Image.fromarray(np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 14, "RGB")
    explanation = explain(served, image)
    assert explanation.grid.shape == (7, 7) and 1 < explanation.forward_passes <= DEFAULT.passes(7)
    assert explanation.grid.min() >= 0 and explanation.grid.max() <= 1
