"""Request batching across users: concurrent requests share one backend call.

Why: some backends (OpenVINO, PyTorch bf16) do more images per second per call with a batch than one
image at a time. A request waits at most ``max_wait_ms`` for company, and only when another request
could still join: one already queued, one still being decoded (``coming``), or another worker busy. A
lone request on an idle server waits for nothing, so batching never slows it. ``workers`` threads take
batches from one queue; with a thread-safe backend (ONNX Runtime) they run at the same time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager

import numpy as np

from space.serving.threads import INFERENCE
from space.serving.threads import set_name as name_os_thread

log = logging.getLogger(__name__)

_STOP = object()


class Batcher:
    """Gathers ``submit`` calls from many threads into batches for ``run(batch) -> rows``."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 8,
        max_wait_ms: float = 5.0,
        workers: int = 1,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._idle = workers  # workers not running a batch: a lone request needs no waiting if one is free
        self._coming = 0  # requests being decoded that will submit soon (see ``coming``)
        self._lock = threading.Lock()
        self.batches = 0  # counters for tests (/metrics counts batches in space.metrics.counted)
        self.items = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"{INFERENCE}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @contextmanager
    def coming(self) -> Iterator[None]:
        """Around a request's decoding: while it lasts, a batch being gathered waits (within the bound)
        for this request too. Without it, batches closed at two images while more were still being
        decoded, and small batches cost more per image."""
        with self._lock:
            self._coming += 1
        try:
            yield
        finally:
            with self._lock:
                self._coming -= 1

    def submit(self, pixels: np.ndarray) -> np.ndarray:
        """The backend's output row for one input (C, H, W); blocks until its batch has run."""
        future: Future[np.ndarray] = Future()
        self._queue.put((pixels, future))
        return future.result()

    def submit_many(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """The rows for several inputs (each C, H, W), queued together (a request's images, or an
        explanation's chunk of masked copies): they share batches with every other request's."""
        futures: list[Future[np.ndarray]] = []
        for item in pixels:
            future: Future[np.ndarray] = Future()
            self._queue.put((item, future))
            futures.append(future)
        return np.stack([future.result() for future in futures])

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)

    def _work(self) -> None:
        name_os_thread(threading.current_thread().name)  # "inference-N", as the bench reads it
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            with self._lock:
                self._idle -= 1
            try:
                batch = [first, *self._gather()]
                stop = _STOP in batch
                batch = [item for item in batch if item is not _STOP]
                self._run_batch(batch)  # type: ignore[arg-type]
            finally:
                with self._lock:
                    self._idle += 1
            if stop:
                return

    def _gather(self) -> list[object]:
        """More requests for this batch: those already queued, then those arriving within the wait bound.

        It waits only if company can be expected soon: a request already gathered, one being decoded, or
        another worker busy; an idle server answers a lone request at once.
        """
        items: list[object] = []
        deadline = time.monotonic() + self.max_wait
        while len(items) + 1 < self.max_batch_size:
            try:
                items.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            with self._lock:
                expected = self._coming > 0 or self._idle < len(self._threads) - 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not (expected or items):
                break
            try:
                items.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
            if items[-1] is _STOP:
                break
        return items

    def _run_batch(self, batch: list[tuple[np.ndarray, Future[np.ndarray]]]) -> None:
        # Processors that keep the aspect ratio make different shapes: each shape is its own call.
        groups: dict[tuple[int, ...], list[tuple[np.ndarray, Future[np.ndarray]]]] = {}
        for item in batch:
            groups.setdefault(item[0].shape, []).append(item)
        for group in groups.values():
            futures = [future for _, future in group]
            try:
                rows = self._run(np.stack([pixels for pixels, _ in group]))
            except BaseException as error:
                for future in futures:
                    future.set_exception(error)
                continue
            self.batches += 1
            self.items += len(group)
            for future, row in zip(futures, rows, strict=True):
                future.set_result(row)
