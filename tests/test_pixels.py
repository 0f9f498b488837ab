"""The one-pass preprocessing gives the processor's pixels on real photos, and stands aside where it
cannot prove that (a processor with its own steps, a resize rule it does not follow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoImageProcessor
from transformers.models.efficientnet.image_processing_pil_efficientnet import EfficientNetImageProcessorPil

from space.serving.pixels import TOLERANCE, fast_path
from tests.conftest import PHOTOS


def test_one_pass_equals_the_processor_on_every_photo(tiny_vit: Path, real_model: Path) -> None:
    """ViT (fixed size) and the real model's processor (shortest edge, then a centre crop)."""
    for model in (tiny_vit, real_model):
        processor = AutoImageProcessor.from_pretrained(model, local_files_only=True)
        pixels = fast_path(processor)
        assert pixels is not None, type(processor).__name__
        for path in sorted(PHOTOS.glob("*.*g")):
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            expected = processor(images=[image], return_tensors="np")["pixel_values"][0]
            got = pixels(image)
            assert got.dtype == np.float32 and got.shape == expected.shape, path.name
            assert float(np.abs(got - expected).max()) <= TOLERANCE, path.name


def test_processors_with_their_own_steps_keep_the_processor(tiny_vit: Path) -> None:
    assert fast_path(EfficientNetImageProcessorPil()) is None  # its own _preprocess (offset, include_top)
    processor = AutoImageProcessor.from_pretrained(tiny_vit, local_files_only=True)
    processor.size = type(processor.size)(shortest_edge=200, longest_edge=300)  # a rule not followed here
    assert fast_path(processor) is None
    assert fast_path(object()) is None
