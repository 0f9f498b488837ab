"""The explanation map drawn for people: laid over the photo, with a colour scale and a legend under it
(the PNG answer, the page, MCP), and the page's caption. Pillow and numpy only; Pillow's own font, so
nothing is fetched."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from space.serving.explain import READING, Explanation, working_copy

OVERLAY_MAX_EDGE = 1024  # the PNG answer: enough to see the map, not a copy of a 12 MP upload
SCALE_HEIGHT = 44  # the strip under the picture: the colour scale and what the map is
CAPTION = "Where it looked for **{label}** ({score:.0%}): {method}; {passes} passes, {seconds:.1f} s. "


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


def drawn(image: Image.Image, explanation: Explanation) -> Image.Image:
    """The map laid over ``image``, with a strip under it: the colour scale from "no effect" to "most",
    and the class and method, so that the picture explains itself wherever it is shown (the PNG answer,
    the page, MCP)."""
    picture = overlay(image, explanation.grid)
    width = max(picture.width, 320)
    out = Image.new("RGB", (width, picture.height + SCALE_HEIGHT), "white")
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=12)
    top, bar = picture.height + 6, (90, width - 60)
    ramp = np.linspace(0.0, 1.0, bar[1] - bar[0])[None, :].repeat(10, axis=0)
    strength = (0.6 * ramp)[..., None]  # as laid over a white page: what a value looks like on the photo
    colours = 255.0 * (1 - strength) + heat_colours(ramp) * strength
    out.paste(Image.fromarray(colours.round().astype(np.uint8), "RGB"), (bar[0], top + 2))
    draw.text((6, top), "no effect", fill="black", font=font)
    draw.text((bar[1] + 6, top), "most", fill="black", font=font)
    text = f"{explanation.label}: {explanation.method}, {explanation.forward_passes} passes"
    draw.text((6, top + 18), text[: width // 6], fill="black", font=font)
    return out


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def legend(explanation: Explanation) -> str:
    """The page's caption: what the map is, what it cost, and how to read it."""
    text = CAPTION.format(
        label=explanation.label,
        score=explanation.score,
        method=explanation.method,
        passes=explanation.forward_passes,
        seconds=explanation.seconds,
    )
    return text + READING
