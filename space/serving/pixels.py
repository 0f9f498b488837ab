"""The processor's resize, crop, rescale and normalise in one pass, for the plain processors most
image-classification checkpoints have (ViT, DeiT, BEiT, ConvNeXT, ResNet, ...).

Why: transformers' PIL processor turns each image into an array, back into a PIL image to resize it,
into an array again, then rescales and normalises in two more passes. Measured under 16 clients
(py-spy, ViT-B/16 on OpenVINO int8): that was 44% of the server's CPU outside inference. Here the
image is resized by the same PIL call and then scaled once, ``pixels * (factor / std) - mean / std``.

:func:`fast_path` returns it only where it gives the processor's answer: a processor with its own
``_preprocess`` (EfficientNet's offset, padding, ...) keeps the processor, and at load time both are run
on two probe images and must agree within :data:`TOLERANCE`, or the processor is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # float32 rounding of the fused scale; one uint8 step after normalising is about 8e-3
PROBES = ((640, 480), (333, 517))  # landscape and portrait, neither a multiple of the model's size

ONE_PASS = "one pass (equal to the processor)"  # how /info names this path

Pixels = Callable[[Image.Image], np.ndarray]


def fast_path(processor: Any) -> Pixels | None:
    """One image (RGB) to float32 CHW as ``processor`` makes it, or None where that is not proven."""
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:
        return None
    if not isinstance(processor, PilBackend) or type(processor)._preprocess is not PilBackend._preprocess:
        return None
    if getattr(processor, "do_pad", None):
        return None
    try:
        pixels = _plain(processor)
    except (AttributeError, TypeError, ValueError):
        return None
    rng = np.random.default_rng(0)
    for size in PROBES:
        probe = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        expected = processor(images=[probe], return_tensors="np")["pixel_values"][0]
        got = pixels(probe)
        if got.shape != expected.shape or float(np.abs(got - expected).max()) > TOLERANCE:
            log.info("preprocessing: the processor (the one-pass path differs)", extra={"size": size})
            return None
    return pixels


def _plain(processor: Any) -> Pixels:
    size, crop = processor.size, processor.crop_size if processor.do_center_crop else None
    resample = Image.Resampling(int(processor.resample if processor.resample is not None else 2))
    scale = np.float32(processor.rescale_factor if processor.do_rescale else 1.0)
    mean = np.asarray(processor.image_mean if processor.do_normalize else 0.0, np.float32).reshape(-1)
    std = np.asarray(processor.image_std if processor.do_normalize else 1.0, np.float32).reshape(-1)
    multiply, add = scale / std, -mean / std
    fixed = bool(size.height and size.width and not size.shortest_edge)
    if processor.do_resize and not fixed and not (size.shortest_edge and not size.longest_edge):
        raise ValueError("a resize rule the one-pass path does not follow")

    def resized(image: Image.Image) -> Image.Image:
        if not processor.do_resize:
            return image
        if fixed:
            return image.resize((size.width, size.height), resample)
        width, height = image.size  # the shortest edge to its size, the aspect ratio kept
        short, long = sorted((width, height))
        target = (size.shortest_edge, int(size.shortest_edge * long / short))
        return image.resize(target if width <= height else target[::-1], resample)

    def pixels(image: Image.Image) -> np.ndarray:
        image = resized(image if image.mode == "RGB" else image.convert("RGB"))  # convert copies
        if crop is not None:
            width, height = image.size
            top, left = (height - crop.height) // 2, (width - crop.width) // 2
            image = image.crop((left, top, left + crop.width, top + crop.height))
        values = np.asarray(image, dtype=np.float32) * multiply + add
        return np.ascontiguousarray(values.transpose(2, 0, 1))

    return pixels
