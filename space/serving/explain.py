"""Where did it look? Occlusion-sensitivity maps, computed with the serving backend itself.

Why occlusion: it needs nothing but the model's forward pass, so it works for every architecture and every
baked runtime (PyTorch fp32/bf16, ONNX Runtime fp32/int8) without changing the exported model and without
torch at serve time. Each cell of a rows x cols grid over the user's image is hidden in turn (a rectangle
of the processor's mean colour pasted on a copy, mid-grey when it does not normalise); every copy goes
through the model's own processor, and the cell's value is how much the target class's score drops (the
model's default scores, as ``/predict`` gives them: softmax, or sigmoid for a multi-label model).
Occluding the image itself, before the processor, makes the grid map exactly onto the user's picture
whatever the resize and crop rules; a cell the processor crops away leaves the model's input unchanged,
is not run, and gets 0 (the model never saw it). Drops are clipped at 0 and divided by the largest.

:class:`space.serving.explainer.Explainer` bounds the cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from space.serving import metrics
from space.serving.admission import DeadlineExceeded
from space.serving.classifier import Classifier, scores
from space.serving.params import target_index

METHOD = "occlusion"
MID_GREY = (128, 128, 128)


@dataclass
class Explanation:
    """An occlusion map for one class of one image: ``grid[r][c]`` in [0, 1], rows top to bottom."""

    label: str
    index: int
    score: float
    grid: np.ndarray
    forward_passes: int
    seconds: float

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
            "method": METHOD,
        }


def fill_colour(processor: Any) -> tuple[int, int, int]:
    """The colour that means "nothing here" to the model: its normalisation mean (0 after normalising)."""
    mean = getattr(processor, "image_mean", None)
    if not getattr(processor, "do_normalize", False) or mean is None:
        return MID_GREY
    values = [float(mean)] * 3 if np.isscalar(mean) else [float(v) for v in mean]
    if len(values) == 1:
        values *= 3
    return tuple(round(255 * min(1.0, max(0.0, v))) for v in values[:3])  # type: ignore[return-value]


def cell_boxes(width: int, height: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each grid cell, row by row; the cells tile the image exactly."""
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def working_copy(image: Image.Image, max_edge: int) -> Image.Image:
    """The image at most ``max_edge`` on its longer side: the processor resizes far below that anyway, and
    every occluded copy is preprocessed, so a 12 MP upload must not be copied rows*cols times."""
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
    run: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Explanation:
    """The occlusion map of ``image`` for ``target`` (default: the top class), through the classifier's own
    processor and backend: one unmasked pass, then one pass per cell the model can see, ``chunk`` per call.

    ``deadline`` (``time.monotonic()``) is checked between calls: past it, :class:`DeadlineExceeded`.
    ``run`` turns a batch of pixels into logits: the server passes its request batcher (the same
    inference threads as predictions), so a /predict that arrives meanwhile waits for one chunk, not for
    the whole explanation; the default calls the backend directly.
    """
    run = run or metrics.counted(classifier.backend.logits)
    started = time.perf_counter()
    index = target_index(target, classifier.labels)  # before any pass: a bad target costs none
    work = working_copy(image, max_edge)
    base = classifier.preprocess([work])
    function = classifier.function_to_apply  # the model's own scores, as /predict gives by default
    probabilities = scores(run(base)[0], function)
    index = int(np.argmax(probabilities)) if index is None else index
    score = float(probabilities[index])
    passes = 1
    fill = fill_colour(classifier.processor)
    boxes = cell_boxes(*work.size, grid, grid)
    drops = np.zeros(len(boxes))
    chunk = max(1, chunk)

    def run_chunk(start: int) -> int:
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("The explanation took longer than the request time limit; retry later.")
        copies = []
        for box in boxes[start : start + chunk]:
            copy = work.copy()
            if box[2] > box[0] and box[3] > box[1]:  # an image narrower than the grid has empty cells
                copy.paste(fill, box)
            copies.append(copy)
        pixels = classifier.preprocess(copies)
        seen = [i for i in range(len(copies)) if not np.array_equal(pixels[i], base[0])]
        if not seen:
            return 0  # cropped away by the processor: the model never sees these cells
        logits = run(np.ascontiguousarray(pixels[seen]))
        for i, row in zip(seen, logits, strict=True):
            drops[start + i] = score - scores(row, function)[index]
        return len(seen)

    passes += sum(map(run_chunk, range(0, len(boxes), chunk)))
    drops = np.clip(drops, 0.0, None)
    peak = drops.max()
    values = drops / peak if peak > 0 else drops
    return Explanation(
        label=classifier.labels[index],
        index=index,
        score=score,
        grid=values.reshape(grid, grid),
        forward_passes=passes,
        seconds=time.perf_counter() - started,
    )
