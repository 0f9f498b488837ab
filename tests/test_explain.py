"""Explanation maps (space/explain.py) on the real ImageNet model and real photos, in process through the
serving code (the service, its batcher and explainer): does the map point at the object, and do the maps
of every baked backend agree? The HTTP, page and MCP sides are in test_explain_api.py, test_browser.py
and test_mcp.py. The figures are printed (pytest -s) and stated in the README."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from space.bake.export import export_optimized
from space.errors import BadParameter
from space.serving.explain import Explanation, cell_boxes, fill_colour
from space.serving.images import read_file
from space.serving.overlay import overlay
from space.serving.params import EXPLAIN, Params, parse, target_index
from space.serving.service import ClassificationService
from tests.conftest import Photo, loaded_service, predict_alone

CANVAS = 448  # the real model's processor: shortest edge to 256, centre crop 224 (it keeps 392 px of 448)
KEPT = (CANVAS - CANVAS * 224 // 256) // 2, CANVAS - (CANVAS - CANVAS * 224 // 256) // 2
PASTED_EDGE = 168  # the photo's longer side on the canvas: about 2.6 x 2.6 of the 7 x 7 cells
PLACEMENTS = 2
SEED = 17
MIN_HIT_RATE = 0.9
# Backend agreement bounds, Pearson r of each grid with fp32 PyTorch's (README: Explanations). Measured,
# lowest of four photos: ONNX Runtime fp32 1.000, int8 0.997, PyTorch bf16 0.88 (the zebra; 0.98 to 0.99
# on the others: bf16 probabilities are coarser, and small drops differ most).
MIN_PEARSON = {"onnxruntime-fp32": 0.99, "onnxruntime-int8": 0.99, "torch-bf16": 0.8}


@pytest.fixture(scope="module")
def served(real_model: Path) -> Iterator[ClassificationService]:
    service = loaded_service(real_model)
    yield service
    service.close()


def explain(service: ClassificationService, image: Image.Image, target: str | None = None) -> Explanation:
    """The service's own explanation of ``image`` (decoded already), from a test's thread."""
    return asyncio.run(service.explain(image, Params(target=target)))[0]


def read(service: ClassificationService, path: Path) -> Image.Image:
    return read_file(path, service.limits, service.loaded.draft_size)


def placements(photo: Image.Image, rng: np.random.Generator) -> Iterator[tuple[Image.Image, tuple[int, ...]]]:
    """The photo shrunk and pasted on a mid-grey canvas, inside the area the processor keeps. The grey has
    a little seeded grain: on a flat canvas of exactly the fill colour, hiding a background cell would not
    change the input at all, and those cells would be 0 without asking the model."""
    small = photo.copy()
    small.thumbnail((PASTED_EDGE, PASTED_EDGE), Image.Resampling.LANCZOS)
    width, height = small.size
    for _ in range(PLACEMENTS):
        left = int(rng.integers(KEPT[0], KEPT[1] - width + 1))
        top = int(rng.integers(KEPT[0], KEPT[1] - height + 1))
        grain = rng.normal(128, 12, (CANVAS, CANVAS, 1)).clip(0, 255).astype(np.uint8).repeat(3, axis=2)
        canvas = Image.fromarray(grain, "RGB")
        canvas.paste(small, (left, top))
        yield canvas, (left, top, left + width, top + height)


def overlap(cell: tuple[int, ...], region: tuple[int, ...]) -> float:
    """The share of ``cell``'s area inside ``region``."""
    width = max(0, min(cell[2], region[2]) - max(cell[0], region[0]))
    height = max(0, min(cell[3], region[3]) - max(cell[1], region[1]))
    return width * height / ((cell[2] - cell[0]) * (cell[3] - cell[1]))


def test_the_map_points_at_the_object_on_real_photos(
    served: ClassificationService, photos: list[Photo]
) -> None:
    """Each photo the model gets right, pasted small at seeded places on a grey canvas: the hottest cell
    is on the photo in at least 90% of placements, and the map is hotter on the photo than off it in all."""
    rng = np.random.default_rng(SEED)
    hits, centred, lines, contrasts, passes = [], [], [], [], set()
    for photo in photos:
        image = read(served, photo.path)
        top = predict_alone(served.model, image, 1)[0].label
        if top not in photo.accepted:
            continue
        for canvas, region in placements(image, rng):
            explanation = explain(served, canvas, top)
            assert explanation.label == top and explanation.grid.shape == (7, 7)
            grid = explanation.grid.ravel()
            assert grid.min() >= 0 and grid.max() == pytest.approx(1.0)
            cells = cell_boxes(CANVAS, CANVAS, 7, 7)
            shares = np.array([overlap(cell, region) for cell in cells])
            hottest = cells[int(np.argmax(grid))]
            centre = ((hottest[0] + hottest[2]) / 2, (hottest[1] + hottest[3]) / 2)
            # On the photo: the hottest cell covers at least a quarter of a cell's area of it (a 64 px
            # cell often straddles the photo's edge); the stricter "its centre is on the photo" is printed.
            hit = overlap(hottest, region) >= 0.25
            centred.append(region[0] <= centre[0] <= region[2] and region[1] <= centre[1] <= region[3])
            inside, outside = grid[shares >= 0.5].mean(), grid[shares == 0].mean()
            hits.append(hit)
            contrasts.append((inside, outside))
            passes.add(explanation.forward_passes)
            lines.append(
                f"{photo.path.name:16} {region} hottest on photo: {hit!s:5} mean on {inside:.2f} off "
                f"{outside:.2f} ({explanation.forward_passes} passes, {explanation.seconds:.2f} s)"
            )
    print("\n".join(lines))
    rate = sum(hits) / len(hits)
    inside_mean = np.mean([i for i, _ in contrasts])
    outside_mean = np.mean([o for _, o in contrasts])
    print(
        f"localisation: {len(hits)} placements of {len(hits) // PLACEMENTS} photos; hottest cell on the "
        f"photo in {sum(hits)}/{len(hits)} = {rate:.0%} (its centre on it: {sum(centred)}/{len(hits)}); "
        f"mean inside > outside in {sum(i > o for i, o in contrasts)}/{len(contrasts)}; mean inside "
        f"{inside_mean:.2f}, outside {outside_mean:.2f}; forward passes {sorted(passes)}"
    )
    assert len(hits) >= 2 * 10  # at least ten photos are classified right (all 13 are, see test_api)
    assert rate >= MIN_HIT_RATE, lines
    assert all(inside > outside for inside, outside in contrasts), lines
    # The processor crops 28 px off each side of the canvas: the outer cells still show partly (50 passes).
    assert passes == {50}


def test_cells_the_processor_crops_away_cost_no_pass_and_get_zero(
    served: ClassificationService, photos: list[Photo]
) -> None:
    """A wide panorama: the centre crop drops its left and right ends, so those columns are 0, unrun."""
    image = read(served, photos[0].path).resize((320, 200))
    explanation = explain(served, image)
    grid = explanation.grid
    assert np.all(grid[:, 0] == 0) and np.all(grid[:, -1] == 0)
    assert explanation.forward_passes == 1 + 7 * 5  # only the five middle columns reach the model
    assert grid.max() == pytest.approx(1.0)


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


def test_overlay_keeps_cold_pixels_and_colours_hot_ones() -> None:
    image = Image.new("RGB", (140, 70), (0, 0, 255))
    grid = np.zeros((7, 7))
    grid[3, 6] = 1.0
    out = np.asarray(overlay(image, grid))
    assert out.shape == (70, 140, 3)
    assert tuple(out[5, 5]) == (0, 0, 255)  # far from the hot cell: untouched
    assert out[35, 135, 0] > 120 and out[35, 135, 2] < 140  # the hot cell: red laid over the blue


@pytest.mark.bake
def test_every_baked_backend_agrees_with_fp32(real_model: Path, photos: list[Photo], tmp_path: Path) -> None:
    """The bake's runtimes (ONNX Runtime fp32 and int8, PyTorch bf16) give the fp32 map, within a bound."""
    chosen = [p for p in photos if p.path.name in ("lion.jpg", "zebra.jpg", "orange.jpg", "cat_chelsea.png")]
    runtimes = {"torch-fp32": loaded_service(real_model, backend="torch", precision="fp32")}
    runtimes["torch-bf16"] = loaded_service(real_model, backend="torch", precision="bf16")
    for precision in ("fp32", "int8"):
        folder = tmp_path / precision
        shutil.copytree(real_model, folder)
        export_optimized(folder, folder, "onnxruntime", precision, [p.path for p in photos])
        runtimes[f"onnxruntime-{precision}"] = loaded_service(folder)  # auto: serves what the bake chose
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
            f"map agreement with torch-fp32, Pearson r per photo {[p.path.name for p in chosen]}: {agreement}"
        )
        assert all(min(r) >= MIN_PEARSON[name] for name, r in agreement.items()), agreement
    finally:
        for service in runtimes.values():
            service.close()


def test_an_image_smaller_than_the_grid_is_explained(served: ClassificationService) -> None:
    """A 3 x 2 pixel image: most cells are empty (0, no pass); the answer is still a 7 x 7 map."""
    image = Image.fromarray(np.arange(18, dtype=np.uint8).reshape(2, 3, 3) * 14, "RGB")
    explanation = explain(served, image)
    assert explanation.grid.shape == (7, 7) and 1 < explanation.forward_passes <= 1 + 6
    assert explanation.grid.min() >= 0 and explanation.grid.max() <= 1
