"""Where did it look? Occlusion maps, computed with the serving backend itself.

Why occlusion: it needs nothing but the model's forward pass, so it works for every architecture and every
baked runtime without changing the exported model and without torch at serve time. A window slides over
a grid of rows x cols cells on the user's image; at each position the window's pixels are replaced by the
same pixels blurred (the detail that makes an object is gone, the colours and layout stay, so the copy
is still like the photos the model was trained on) and the copy goes through the model's own processor.
A window's value is how much the target class's score drops (the model's default scores, as ``/predict``
gives them); a cell's value is the mean over the windows that cover it, clipped at 0 and divided by the
largest. Occluding the image itself, before the processor, makes the grid map exactly onto the user's
picture whatever the resize and crop rules; a window the processor crops away leaves the model's input
unchanged, is not run, and counts 0.

The method was chosen by measurement (``python -m space bench --explanations``, docs/explanations.md):
of grey, mean-colour and blurred fills, single cells, 2x2 and 3x3 windows, two scales and random masks,
2x2 windows with a blurred fill were the only ones both to find objects on busy backgrounds and to remove
the score faster than random orders (the deletion curve of Petsiuk et al., RISE, BMVC 2018) on the
committed photos, with the fewest passes. :class:`space.serving.explainer.Explainer` bounds the cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageStat

from space.serving import metrics
from space.serving.admission import DeadlineExceeded
from space.serving.classifier import Classifier, scores
from space.serving.params import target_index

MID_GREY = (128, 128, 128)
READING = (
    "Red: hiding this region lowers the class's score most; yellow: a little; no colour: no effect on it. "
    "It shows what the model used, not where the object is."
)


@dataclass(frozen=True)
class Method:
    """How the map is made: windows of ``window`` x ``window`` cells every ``stride`` cells, filled with
    ``fill`` (see :func:`fill_image`)."""

    window: int = 2
    stride: int = 1
    fill: str = "blur"

    @property
    def name(self) -> str:
        size = f"{self.window}x{self.window}"
        return f"occlusion, {size}-cell windows every {self.stride} cell, {self.fill} fill"

    def positions(self, cells: int) -> list[int]:
        return list(range(0, max(1, cells - self.window + 1), self.stride))

    def passes(self, cells: int) -> int:
        """Forward passes for a grid of ``cells`` x ``cells``: one per window position, and the image."""
        return len(self.positions(cells)) ** 2 + 1


DEFAULT = Method()


@dataclass
class Explanation:
    """A map for one class of one image: ``grid[r][c]`` in [0, 1], rows top to bottom."""

    label: str
    index: int
    score: float
    grid: np.ndarray
    forward_passes: int
    seconds: float
    method: str = DEFAULT.name

    def as_dict(self) -> dict[str, Any]:
        rows, cols = self.grid.shape
        return {
            "label": self.label,
            "index": self.index,
            "score": self.score,
            "grid": [[round(float(v), 4) for v in row] for row in self.grid],
            "rows": rows,
            "cols": cols,
            "forward_passes": self.forward_passes,
            "seconds": round(self.seconds, 3),
            "method": self.method,
            "reading": READING,
        }


def fill_image(image: Image.Image, fill: str, processor: Any) -> Image.Image:
    """What occluded pixels become: the image blurred (a radius of a sixteenth of its longer side), the
    image's mean colour (``mean``), or the colour that means "nothing here" to the model (``grey``: its
    normalisation mean, mid-grey without one)."""
    if fill == "blur":
        return image.filter(ImageFilter.GaussianBlur(max(image.size) / 16))
    if fill == "mean":
        return Image.new("RGB", image.size, tuple(round(v) for v in ImageStat.Stat(image).mean[:3]))
    return Image.new("RGB", image.size, fill_colour(processor))


def fill_colour(processor: Any) -> tuple[int, int, int]:
    """The processor's normalisation mean as a colour (0 after normalising), mid-grey when it has none."""
    mean = getattr(processor, "image_mean", None)
    if not getattr(processor, "do_normalize", False) or mean is None:
        return MID_GREY
    values = [float(mean)] * 3 if np.isscalar(mean) else [float(v) for v in mean]
    if len(values) == 1:
        values *= 3
    return tuple(round(255 * min(1.0, max(0.0, v))) for v in values[:3])  # type: ignore[return-value]


def cell_edges(length: int, cells: int) -> np.ndarray:
    return np.linspace(0, length, cells + 1).round().astype(int)


def cell_boxes(width: int, height: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each grid cell, row by row; the cells tile the image exactly."""
    xs, ys = cell_edges(width, cols), cell_edges(height, rows)
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def seen_cells(
    classifier: Classifier,
    image: Image.Image,
    fill: Image.Image,
    base: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
) -> np.ndarray:
    """1 for the cells the model sees, 0 for those its processor crops away: a window that straddles both
    must not lend its drop to a cell the model never saw. One processor call (a strip per row and column),
    no forward pass."""

    columns = [(xs[c], 0, xs[c + 1], image.height) for c in range(len(xs) - 1)]
    rows = [(0, ys[r], image.width, ys[r + 1]) for r in range(len(ys) - 1)]
    pixels = classifier.preprocess([occluded(image, fill, box) for box in columns + rows])
    seen = np.array([not np.array_equal(p, base) for p in pixels])
    return np.outer(seen[len(columns) :], seen[: len(columns)]).astype(float)


def occluded(image: Image.Image, fill: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A copy of ``image`` with ``box`` taken from ``fill`` (an image narrower than the grid has empty
    boxes: the copy is the image)."""
    copy = image.copy()
    if box[2] > box[0] and box[3] > box[1]:
        copy.paste(fill.crop(box), box[:2])
    return copy


def working_copy(image: Image.Image, max_edge: int) -> Image.Image:
    """The image at most ``max_edge`` on its longer side: the processor resizes far below that anyway, and
    every occluded copy is preprocessed, so a 12 MP upload must not be copied once per window."""
    if max(image.size) <= max_edge:
        return image
    reduced = image.copy()
    reduced.thumbnail((max_edge, max_edge), Image.Resampling.BICUBIC)
    return reduced


def explain(
    classifier: Classifier,
    image: Image.Image,
    target: str | int | None = None,
    grid: int = 7,
    chunk: int = 8,
    deadline: float | None = None,
    max_edge: int = 448,
    run: Callable[[Sequence[np.ndarray]], np.ndarray] | None = None,
    method: Method = DEFAULT,
) -> Explanation:
    """The map of ``image`` for ``target`` (default: the top class), through the classifier's own processor
    and backend: one pass of the image itself and one per window position the model can see, ``chunk``
    per call (the first call carries the image too).

    ``deadline`` (``time.monotonic()``) is checked between calls: past it, :class:`DeadlineExceeded`.
    ``run`` turns a batch of pixels into logits: the server passes its request batcher (the same
    inference threads as predictions), so a /predict that arrives meanwhile waits for one chunk, not for
    the whole explanation; the default calls the backend directly.
    """
    run = run or metrics.counted(classifier.backend.logits)
    started = time.perf_counter()
    index = target_index(target, classifier.labels)  # before any pass: a bad target costs none
    work = working_copy(image, max_edge)
    base = classifier.preprocess([work])[0]
    function = classifier.function_to_apply  # the model's own scores, as /predict gives by default
    fill = fill_image(work, method.fill, classifier.processor)
    xs, ys = cell_edges(work.width, grid), cell_edges(work.height, grid)
    windows = [(r, c) for r in method.positions(grid) for c in method.positions(grid)]  # row by row
    span = method.window
    boxes = [(xs[c], ys[r], xs[min(c + span, grid)], ys[min(r + span, grid)]) for r, c in windows]
    found: dict[int, np.ndarray] = {}  # window -> the scores with it occluded
    unoccluded: list[np.ndarray] = []
    chunk = max(1, chunk)

    def run_chunk(start: int) -> int:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("The explanation took longer than the request time limit; retry later.")
        copies = [occluded(work, fill, box) for box in boxes[start : start + chunk]]
        pixels = classifier.preprocess(copies)
        # A window the processor crops away leaves the input unchanged: the model never sees it, no pass.
        seen = [i for i in range(len(copies)) if not np.array_equal(pixels[i], base)]
        first = not unoccluded  # the unoccluded image rides with the first chunk: no lone batch of one
        batch = [base] * first + [pixels[i] for i in seen]
        if not batch:
            return 0
        rows = [scores(row, function) for row in run(np.ascontiguousarray(np.stack(batch)))]
        if first:
            unoccluded.append(rows.pop(0))
        found.update((start + i, row) for i, row in zip(seen, rows, strict=True))
        return len(batch)

    passes = sum(map(run_chunk, range(0, len(boxes), chunk)))
    probabilities = unoccluded[0]
    index = int(np.argmax(probabilities)) if index is None else index
    score = float(probabilities[index])
    drops = np.array([score - found[i][index] if i in found else 0.0 for i in range(len(boxes))])
    values, covered = np.zeros((grid, grid)), np.zeros((grid, grid))
    for (r, c), drop in zip(windows, np.clip(drops, 0.0, None), strict=True):
        values[r : r + span, c : c + span] += drop
        covered[r : r + span, c : c + span] += 1
    values = values / np.maximum(covered, 1) * seen_cells(classifier, work, fill, base, xs, ys)
    peak = values.max()
    return Explanation(
        label=classifier.labels[index],
        index=index,
        score=score,
        grid=values / peak if peak > 0 else values,
        forward_passes=passes,
        seconds=time.perf_counter() - started,
        method=method.name,
    )
