"""Inference backends: one module per runtime behind the one small :class:`Backend` protocol, and the
choice of which one serves (:mod:`space.backends.choice`).

Runtimes are imported only by the module that serves them, and that module only when chosen: a server
that runs ONNX Runtime never imports torch (:mod:`space.backends.pytorch` is the one module that does).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """Turns a batch of preprocessed pixels (N, C, H, W float32) into logits (N, num_labels)."""

    name: str

    def logits(self, pixel_values: np.ndarray) -> np.ndarray: ...
