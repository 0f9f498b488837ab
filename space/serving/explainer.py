"""Explanations with bounded cost: how many run at once, how many admission slots each holds, and their
counts in ``/metrics``. The service (:mod:`space.serving.service`) hands it the model, the decoded image
and the batcher's ``run``; the map itself is :mod:`space.serving.explain`.

An explanation holds as many admission slots as it runs forward passes, capped at half the slots so that
predictions always keep the other half; the request time limit is checked between chunks, so abandoned
work stops.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from space.errors import UserError
from space.serving import metrics
from space.serving.admission import DeadlineExceeded, Overloaded
from space.serving.classifier import Classifier
from space.serving.explain import DEFAULT, Explanation, explain


class ExplainBusy(Overloaded):
    """Every explanation slot (SPACE_EXPLAIN_CONCURRENCY) is taken: 503, like a full admission."""


class Explainer:
    """At most ``concurrency`` maps of ``grid`` x ``grid`` cells at once."""

    def __init__(self, grid: int, concurrency: int, admission_limit: int) -> None:
        self.grid = grid
        self.concurrency = concurrency
        self.admission_limit = admission_limit
        self._slots = threading.BoundedSemaphore(concurrency)

    @property
    def weight(self) -> int:
        """Admission slots one explanation holds: its forward passes, at most half of all slots."""
        return max(1, min(DEFAULT.passes(self.grid), self.admission_limit // 2))

    def explain(
        self,
        model: Classifier,
        image: Image.Image,
        target: object,
        run: Callable[[Sequence[np.ndarray]], np.ndarray],
        chunk: int,
        max_edge: int,
        deadline: float,
    ) -> Explanation:
        """One explanation, if fewer than ``concurrency`` are running (else 503 at once)."""
        if not self._slots.acquire(blocking=False):
            raise ExplainBusy(
                f"{self.concurrency} explanation(s) already running (SPACE_EXPLAIN_CONCURRENCY); retry in a "
                "few seconds."
            )
        try:
            result = explain(model, image, target, self.grid, chunk, deadline, max_edge=max_edge, run=run)
        finally:
            self._slots.release()
        metrics.EXPLANATION_SECONDS.observe(result.seconds)
        metrics.EXPLANATION_PASSES.inc(result.forward_passes)
        return result


def count_outcome(error: Exception | None) -> None:
    """Each explanation request counted once in ``/metrics``, by outcome."""
    if error is None:
        outcome = "ok"
    elif isinstance(error, UserError):
        outcome = "error"
    elif isinstance(error, DeadlineExceeded):
        outcome = "timeout"
    else:
        outcome = "busy"
    metrics.EXPLANATIONS.labels(outcome).inc()
