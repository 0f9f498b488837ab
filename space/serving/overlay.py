"""The explanation map drawn for people: laid over the photo (the PNG answer, the page, MCP), with a
legend. Pillow and numpy only."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from space.serving.explain import Explanation, working_copy

OVERLAY_MAX_EDGE = 1024  # the PNG answer: enough to see the map, not a copy of a 12 MP upload
LEGEND = (
    "Red: hiding this region lowers the score of **{label}** most; yellow: a little; no colour: no effect. "
    "Occlusion map, {rows}x{cols} cells, {passes} forward passes, {seconds:.1f} s."
)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Yellow (low) to red (high) for values in [0, 1], as float RGB in [0, 255]."""
    colours = np.empty((*values.shape, 3))
    colours[..., 0] = 255.0
    colours[..., 1] = 220.0 * (1.0 - values)
    colours[..., 2] = 0.0
    return colours


def overlay(image: Image.Image, grid: np.ndarray, max_edge: int = OVERLAY_MAX_EDGE) -> Image.Image:
    """``image`` with the map laid over it: colour and opacity grow with the value (0 leaves it as is)."""
    base = working_copy(image, max_edge).convert("RGB")
    cells = Image.fromarray(np.asarray(grid, dtype=np.float32), mode="F")
    heat = np.asarray(cells.resize(base.size, Image.Resampling.BILINEAR), dtype=np.float64).clip(0, 1)
    alpha = (0.6 * heat)[..., None]
    pixels = np.asarray(base, dtype=np.float64) * (1 - alpha) + heat_colours(heat) * alpha
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8), "RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def legend(explanation: Explanation) -> str:
    rows, cols = explanation.grid.shape
    return LEGEND.format(
        label=explanation.label,
        rows=rows,
        cols=cols,
        passes=explanation.forward_passes,
        seconds=explanation.seconds,
    )
