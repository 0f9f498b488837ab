"""The serving path's Prometheus counters: images, batches, queue depth, explanations.

They live in prometheus-client's default registry (one set per process); ``/metrics``
(:mod:`space.web.metrics`) exports them with the HTTP counters and the model description.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

IMAGES = Counter(
    "space_images_classified_total", "Images run through the model (the start-up warm-up is one)."
)
BATCH_SIZE = Histogram(
    "space_batch_size",
    "Images per forward pass of the model.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
QUEUE_DEPTH = Gauge(
    "space_queue_depth", "Images waiting for the model or in the batch it is running (request batcher)."
)

# Explanations (space/serving/explain.py): each costs many forward passes, so they are counted apart.
EXPLANATIONS = Counter(
    "space_explanations_total",
    "Explanation requests (API, UI, MCP), by outcome: ok, busy (503), timeout (504), error (4xx).",
    ["outcome"],
)
EXPLANATION_SECONDS = Histogram(
    "space_explanation_duration_seconds",
    "Time to compute one explanation map (decoding excluded), for those that finished.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60),
)
EXPLANATION_PASSES = Counter(
    "space_explanation_forward_passes_total", "Forward passes run for explanation maps (one image each)."
)


def observe_batch(size: int) -> None:
    """Count one forward pass of the model over ``size`` images."""
    BATCH_SIZE.observe(size)
    IMAGES.inc(size)


def counted(run: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``run`` (a backend's batch call), observing each batch's size first: for the request batcher."""

    def run_counted(pixel_values: np.ndarray) -> np.ndarray:
        observe_batch(len(pixel_values))
        return run(pixel_values)

    return run_counted


@contextmanager
def waiting(images: int) -> Iterator[None]:
    """``images`` in the queue depth while they wait for, and run in, the model."""
    QUEUE_DEPTH.inc(images)
    try:
        yield
    finally:
        QUEUE_DEPTH.dec(images)
