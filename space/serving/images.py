"""User bytes or files -> the RGB image the model needs, the same way for every entry point (API, UI, CLI)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from space.errors import BadImage, TooLarge

# Formats we decode. Naming them keeps Pillow from trying every other parser on hostile input.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
SUPPORTED = "JPEG, PNG, WebP, GIF, BMP or TIFF"
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    """What one upload may be: checked before any pixel is decoded."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000


ImageSource = bytes | Path | Image.Image  # what a front door hands the service: bytes, a file, or pixels


def load_image(
    source: ImageSource, limits: ImageLimits, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """The RGB image in ``source``, with the same checks whatever the front door."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, Path):
        return read_file(source, limits, draft_size)
    return decode(source, limits, draft_size)


def read_file(
    path: str | Path, limits: ImageLimits, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an image file from disk (the UI's uploads and the CLI) with the same checks as the API."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise TooLarge(_too_many_bytes(size, limits))
        data = path.read_bytes()
    except OSError as error:
        raise BadImage(f"Cannot read {path}: {error.strerror or error}.") from None
    return decode(data, limits, draft_size)


def decode(data: bytes, limits: ImageLimits, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` into an RGB image, or raise a :class:`~space.errors.UserError` that says why not.

    ``draft_size`` lets JPEGs much larger than the model input decode at a reduced scale (at least that
    size), which is several times faster for camera photos.
    """
    if not data:
        raise BadImage(f"The image is empty (0 bytes). Send the bytes of a {SUPPORTED} file.")
    if len(data) > limits.max_bytes:
        raise TooLarge(_too_many_bytes(len(data), limits))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:
        raise TooLarge(
            f"The image has too many pixels ({_reason(error)}). Resize it and try again."
        ) from None
    except Exception as error:  # Pillow raises many types for unreadable input
        raise BadImage(
            f"The data is not an image this server can read ({_reason(error)}). Send a {SUPPORTED} file."
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise BadImage(f"The image has no pixels ({width}x{height}). Send a {SUPPORTED} file.")
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{limits.max_pixels:,}. Resize it (the model sees 224x224 anyway) and try again."
        )
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF/WebP/TIFF: the first frame
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", draft_size)
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return to_rgb(image)
    except Exception as error:
        raise BadImage(
            f"The {image.format or 'image'} file is corrupt or truncated ({_reason(error)}). "
            "Check that the whole file was sent."
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency onto white as a browser shows it."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _high_depth_to_l(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit) grayscale -> 8-bit, scaling instead of clipping as ``convert('L')`` would."""
    pixels = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(pixels, 0.0, 255.0)
    else:
        scaled = np.clip(pixels.astype(np.float64) / 257.0, 0.0, 255.0)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def _too_many_bytes(size: int, limits: ImageLimits) -> str:
    return (
        f"The upload is {size / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.1f} MB. "
        "Send a smaller or more compressed image."
    )


def _reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "its bytes match none of the supported formats"
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def draft_size(processor: object) -> tuple[int, int]:
    """How small a JPEG may be decoded: twice the largest edge the processor resizes to, so that its own
    resize (which antialiases) still does the final reduction and top-1 does not change."""
    edges = [224]
    for name in ("size", "crop_size"):
        value = getattr(processor, name, None) or {}
        value = value if isinstance(value, dict) else dict(value)
        edges += [int(v) for v in value.values() if isinstance(v, int | float)]
    edge = 2 * max(edges)
    return edge, edge
