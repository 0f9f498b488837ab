"""Explanations for the API, the page and MCP, with bounded cost.

:class:`Explainer` bounds what an explanation (:mod:`space.serving.explain`) may take: its own
concurrency limit, a share of the admission slots (the forward passes it runs, capped at half the slots
so that predictions always keep the other half), the request time limit (checked between chunks, so
abandoned work stops), and counts in ``/metrics``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from PIL import Image

from space.errors import UserError
from space.serving import metrics
from space.serving.admission import Admission, DeadlineExceeded, Overloaded, Slot
from space.serving.explain import Explanation, explain
from space.serving.images import decode, read_file
from space.serving.pipeline import Runtime


class ExplainBusy(Overloaded):
    """Every explanation slot (SPACE_EXPLAIN_CONCURRENCY) is taken: 503, like a full admission."""


class Explainer:
    """Explanations for the API, the page and MCP, with bounded cost (see the module docstring)."""

    def __init__(self, runtime: Runtime, admission: Admission | None = None) -> None:
        self.runtime = runtime
        self.admission = admission
        self.grid = runtime.settings.explain_grid
        self.concurrency = runtime.settings.explain_concurrency
        self._slots = threading.BoundedSemaphore(self.concurrency)

    @property
    def weight(self) -> int:
        """Admission slots one explanation holds: its forward passes, at most half of all slots."""
        passes = self.grid * self.grid + 1
        return passes if self.admission is None else max(1, min(passes, self.admission.limit // 2))

    def _chunk(self) -> int:
        """Masked copies queued at once: one batch per inference worker (batches of 1 for ONNX Runtime,
        whose workers run side by side), so the batcher is kept busy but never far ahead of a /predict."""
        plan = self.runtime.plan
        return max(1, int(plan.get("max_batch", 8))) * max(1, int(plan.get("workers", 1)))

    def explain_image(self, image: Image.Image, target: object, deadline: float | None) -> Explanation:
        """One explanation, if fewer than ``explain_concurrency`` are running (else 503 at once)."""
        if not self._slots.acquire(blocking=False):
            metrics.EXPLANATIONS.labels("busy").inc()
            raise ExplainBusy(
                f"{self.concurrency} explanation(s) already running (SPACE_EXPLAIN_CONCURRENCY); retry in a "
                "few seconds."
            )
        try:
            result = explain(
                self.runtime.classifier,
                image,
                target,
                self.grid,
                self._chunk(),
                deadline,
                max_edge=max(self.runtime.draft_size or (448, 448)),
                run=self.runtime.batcher.submit_many if self.runtime.batcher else None,
            )
        finally:
            self._slots.release()
        metrics.EXPLANATIONS.labels("ok").inc()
        metrics.EXPLANATION_SECONDS.observe(result.seconds)
        metrics.EXPLANATION_PASSES.inc(result.forward_passes)
        return result

    def _from_bytes(self, data: bytes, target: object, deadline: float) -> tuple[Explanation, Image.Image]:
        image = decode(data, self.runtime.limits, self.runtime.draft_size)
        return self.explain_image(image, target, deadline), image

    def _from_file(
        self, path: str | Path, target: object, deadline: float
    ) -> tuple[Explanation, Image.Image]:
        image = read_file(path, self.runtime.limits, self.runtime.draft_size)
        return self.explain_image(image, target, deadline), image

    def _deadline(self) -> float:
        return time.monotonic() + (self.admission.timeout_s if self.admission else 3600.0)

    async def run_bytes(self, data: bytes, target: object, slot: Slot) -> tuple[Explanation, Image.Image]:
        """For the API, in the ``weight`` slots it took before reading the body: 504 past the time limit."""
        deadline = self._deadline()
        try:
            return await slot.run(self._from_bytes, data, target, deadline)
        except (Overloaded, DeadlineExceeded, UserError) as error:
            self._count_failure(error)
            raise

    def run_file(self, path: str | Path, target: object) -> tuple[Explanation, Image.Image]:
        """For the page and MCP (Gradio runs this in a worker thread): the same bounds as the API."""
        deadline = self._deadline()
        if self.admission is None:
            return self._from_file(path, target, deadline)
        try:
            return self.admission.run_sync(self._from_file, path, target, deadline, weight=self.weight)
        except (Overloaded, DeadlineExceeded, UserError) as error:
            self._count_failure(error)
            raise

    @staticmethod
    def _count_failure(error: Exception) -> None:
        """Admission refusals, timeouts and user mistakes, counted once (a busy explainer counts itself)."""
        if isinstance(error, UserError):
            metrics.EXPLANATIONS.labels("error").inc()
        elif isinstance(error, DeadlineExceeded):
            metrics.EXPLANATIONS.labels("timeout").inc()
        elif not isinstance(error, ExplainBusy):
            metrics.EXPLANATIONS.labels("busy").inc()
