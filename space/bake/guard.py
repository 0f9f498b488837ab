"""Bake step, accuracy guard: an optimised backend must stay within a stated distance of fp32 PyTorch.

The bound: every example photo keeps its fp32 top-1 label, and the logits of every photo keep a cosine
similarity of at least :data:`MIN_COSINE` with fp32 PyTorch's. Without photos the cosine is measured on
fixed noise inputs instead; with photos, on the photos only: they are what users send, and noise is far
outside the activation ranges a static int8 model was calibrated for (on ViT-B/16, min cosine 0.89 on
noise against 0.996 on held-out photos), so it would refuse a model that serves photos well. Both sides
are serving backends (:mod:`space.backends`), run one image at a time as the server runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from space.backends import Backend
from space.errors import ModelUnavailable

MIN_COSINE = 0.99
MIN_TOP1_AGREEMENT = 1.0
GUARD_INPUTS = 8
GUARD_SEED = 20240607


class AccuracyError(ModelUnavailable):
    """The optimised model drifts from the fp32 reference beyond the stated bound."""


@dataclass
class GuardReport:
    """How close an optimised model is to fp32 PyTorch, and whether that is within the bound."""

    backend: str
    min_cosine: float
    mean_cosine: float
    inputs: int
    photos: int
    top1_agreement: float | None
    disagreements: list[str]
    bound_cosine: float
    bound_top1: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def guard_inputs(image_size: tuple[int, int], count: int = GUARD_INPUTS) -> np.ndarray:
    """The fixed inputs of the logit-similarity check: seeded normalised noise, the same on every run."""
    height, width = image_size
    rng = np.random.default_rng(GUARD_SEED)
    return rng.standard_normal((count, 3, height, width), dtype=np.float32)


def evaluation_inputs(processor: Any, image_size: tuple[int, int], photos: Sequence[Path]) -> np.ndarray:
    """What the guard runs both models on: the photos, preprocessed; without photos, the noise inputs."""
    from PIL import Image

    if not photos:
        return guard_inputs(image_size)
    images = []
    for path in photos:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    return np.ascontiguousarray(pixels, dtype=np.float32)


def judge(
    reference: np.ndarray,
    candidate: np.ndarray,
    backend: str,
    photos: Sequence[str] = (),
    min_cosine: float = MIN_COSINE,
    min_top1: float = MIN_TOP1_AGREEMENT,
) -> GuardReport:
    """The report for two models' logits on the evaluation inputs (``photos``: their names, if photos)."""
    cosine = cosines(reference, candidate)
    agreement, disagreements = None, []
    if photos:
        same = reference.argmax(1) == candidate.argmax(1)
        agreement = float(same.mean())
        disagreements = [name for name, ok in zip(photos, same, strict=True) if not ok]
    passed = bool(cosine.min() >= min_cosine and (agreement is None or agreement >= min_top1))
    return GuardReport(
        backend=backend,
        min_cosine=round(float(cosine.min()), 6),
        mean_cosine=round(float(cosine.mean()), 6),
        inputs=len(reference),
        photos=len(photos),
        top1_agreement=agreement,
        disagreements=disagreements,
        bound_cosine=min_cosine,
        bound_top1=min_top1,
        passed=passed,
    )


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Each row's cosine similarity of two models' logits (rows: images)."""
    return (reference * candidate).sum(1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1) + 1e-12
    )


def rows(backend: Backend, batch: np.ndarray) -> np.ndarray:
    """One image at a time: the serving path runs batch sizes from 1 up, and this keeps memory flat."""
    return np.concatenate(
        [np.asarray(backend.logits(batch[i : i + 1]), dtype=np.float64) for i in range(len(batch))]
    )
