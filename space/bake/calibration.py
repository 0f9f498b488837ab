"""Bake step, calibration set for static int8: augmented crops of real photos that the accuracy guard
never evaluates on.

Why crops of a few photos are enough: static quantisation only estimates each activation's range (NNCF's
min-max and percentile statistics), not anything the model learns; those ranges settle within a few
hundred inputs, which is why NNCF's own default ``subset_size`` is 300. Random crops, flips and small
colour changes of real photos give activations of the statistics real uploads have (noise does not: its
ranges are those of no photo). The guard then measures the result on photos the calibration never saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_SIZE = 300  # NNCF's default subset_size: enough for range statistics (see above)
CALIBRATION_SEED = 20261203
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def calibration_photos(folder: Path | None, evaluation: Sequence[Path] = ()) -> list[Path]:
    """The photos in ``folder``, less any with the same bytes as an ``evaluation`` photo (the guard's):
    the guard measures only on images the calibration never saw.

    No folder: the JPEG photos the gradio package ships (cheetahs, a lion, a tower, ...), real photos
    present wherever the app is installed, so a bake needs no download for its calibration set.
    """
    if folder is None:
        import gradio

        found = sorted((Path(gradio.__file__).parent / "media_assets" / "images").glob("*.jp*g"))
    else:
        found = sorted(p for p in Path(folder).glob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    held_out = {_digest(path) for path in evaluation}
    return [path for path in found if path.is_file() and _digest(path) not in held_out]


def calibration_inputs(
    photos: Sequence[Path], processor: Any, count: int = CALIBRATION_SIZE, seed: int = CALIBRATION_SEED
) -> list[np.ndarray]:
    """``count`` preprocessed inputs (1, C, H, W) float32: seeded random crops of ``photos`` (a quarter
    to all of the area, aspect 3:4 to 4:3), half of them mirrored, brightness and contrast within 20%."""
    from PIL import Image, ImageEnhance, ImageOps

    if not photos:
        raise ValueError("no calibration photos: static int8 needs real images to calibrate on")
    rng = np.random.default_rng(seed)
    originals = []
    for path in photos:
        with Image.open(path) as image:
            originals.append(ImageOps.exif_transpose(image).convert("RGB"))
    inputs = []
    for index in range(count):
        image = originals[index % len(originals)]
        width, height = image.size
        area = rng.uniform(0.25, 1.0) * width * height
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_w = int(min(width, max(8, round(np.sqrt(area * aspect)))))
        crop_h = int(min(height, max(8, round(np.sqrt(area / aspect)))))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        crop = image.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.8, 1.2))
        crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.8, 1.2))
        pixels = processor(images=[crop], return_tensors="np")["pixel_values"]
        inputs.append(np.ascontiguousarray(pixels, dtype=np.float32))
    return inputs


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
