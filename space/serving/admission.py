"""Admission control: a bounded number of images in flight, a time limit on each request, clean refusals.

A public endpoint must not queue without limit, nor spend on work it will refuse. The bound counts
images, not requests: a request of N images holds N slots. The API takes one slot *before* reading the
request body (:meth:`Admission.slot`), so past ``max_in_flight`` a new request is refused at once with
503, ``Retry-After`` and ``Connection: close``, its upload unread; once the body says how many images
it holds, the slot grows to that many (:meth:`Slot.grow`) or the request is refused whole. Admitted
work waits in this module's small thread pool (few threads: decoding and preprocessing hold the GIL part
of the time, and many threads would slow the event loop that answers the 503s); work that cannot start
within ``queue_timeout_s`` is refused with 503 too, rather than queued for seconds, and one that takes
longer than ``request_timeout_s`` in all is answered 504. Work dropped before it started frees its
slots at once; work already running keeps them until its thread finishes, so the bound holds even for
work the client stopped waiting for. An explanation takes several slots (its ``weight``: its forward
passes, capped), so it cannot starve predictions. How inference is scheduled behind this does not
matter here: callers hand in a plain blocking function.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

RETRY_AFTER_S = 1
DEFAULT_WORKERS = 4  # threads running admitted predictions; the rest of the admitted ones wait in order


class Overloaded(Exception):
    """Every admission slot is taken, or the work could not start in time: retry shortly (503)."""

    def __init__(self, message: str, body_unread: bool = False) -> None:
        super().__init__(message)
        self.body_unread = body_unread  # refused before its body was read: close the connection


class DeadlineExceeded(Exception):
    """The prediction did not finish within the time limit (504)."""


class Slot:
    """One admitted request's place (``weight`` slots); freed when the caller is done, or by the worker
    that ran it."""

    def __init__(self, admission: Admission, weight: int) -> None:
        self._admission = admission
        self._weight = weight
        self._held = True

    def grow(self, weight: int, body_unread: bool = False) -> None:
        """Hold ``weight`` slots in all (the request's images, once its body says how many), taking the
        extra ones at once or raising :class:`Overloaded`; the slots already held stay until the caller
        is done. ``body_unread``: refused with the rest of the body still on its way."""
        if weight > self._weight:
            self._admission.enter(weight - self._weight, body_unread)
            self._weight = weight

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread, within the start bound and the time limit."""
        self._held = False  # handed to the worker thread, which frees it when the work ends
        return await self._admission._run_admitted(fn, *args, weight=self._weight)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.leave(self._weight)


class Admission:
    """A non-blocking counter of admitted images, shared by every front door."""

    def __init__(
        self, limit: int, timeout_s: float, workers: int = DEFAULT_WORKERS, queue_timeout_s: float = 2.0
    ) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.queue_timeout_s = queue_timeout_s
        self._in_flight = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=min(limit, workers), thread_name_prefix="predict")

    def enter(self, weight: int = 1, body_unread: bool = False) -> None:
        """Take ``weight`` slots or raise :class:`Overloaded` at once (never waits)."""
        with self._lock:
            if self._in_flight + weight > self.limit:
                raise Overloaded(self.busy_message(), body_unread=body_unread)
            self._in_flight += weight

    def full(self) -> bool:
        """No slot is free (a lock-free read: a hint for :mod:`space.web.door`; :meth:`enter` decides)."""
        return self._in_flight >= self.limit

    def leave(self, weight: int = 1) -> None:
        with self._lock:
            self._in_flight -= weight

    @contextmanager
    def slot(self, weight: int = 1) -> Iterator[Slot]:
        """Slots taken before the request body is read: when full, the body is never read at all."""
        self.enter(weight, body_unread=True)
        slot = Slot(self, weight)
        try:
            yield slot
        finally:
            slot.release()  # a no-op once run() handed the slot to a worker

    def _run_and_leave(self, fn: Callable[..., T], *args: object, weight: int = 1) -> T:
        try:
            return fn(*args)
        finally:
            self.leave(weight)

    def _start_bound(self) -> float | None:
        """How long work may wait for a thread before it is refused (None: the time limit decides)."""
        return self.queue_timeout_s if self.queue_timeout_s < self.timeout_s else None

    async def _run_admitted(self, fn: Callable[..., T], *args: object, weight: int = 1) -> T:
        work = self._submit(fn, *args, weight=weight)
        waiter = asyncio.wrap_future(work)
        started = time.monotonic()
        # shield: on timeout, running work goes on (holding its slot) but the client is answered now.
        bound = self._start_bound()
        if bound is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), bound)
            except TimeoutError:
                if work.cancel():  # still waiting for a thread: refuse now rather than queue for seconds
                    waiter.add_done_callback(_consume)
                    self.leave(weight)
                    raise Overloaded(self._queue_message()) from None
        try:
            remaining = self.timeout_s - (time.monotonic() - started)
            return await asyncio.wait_for(asyncio.shield(waiter), max(remaining, 0))
        except TimeoutError:
            waiter.add_done_callback(_consume)  # no "exception never retrieved" noise from abandoned work
            self._abandon(work, weight)
            raise DeadlineExceeded(self._timeout_message()) from None

    def run_sync(self, fn: Callable[..., T], *args: object, weight: int = 1) -> T:
        """Take ``weight`` slots and run, for a caller that is itself a worker thread (Gradio runs sync
        functions in threads); the same bounds as the API."""
        self.enter(weight)
        work = self._submit(fn, *args, weight=weight)
        bound = self._start_bound()
        started = time.monotonic()
        if bound is not None:
            try:
                return work.result(timeout=bound)
            except TimeoutError:
                if work.cancel():
                    self.leave(weight)
                    raise Overloaded(self._queue_message()) from None
        try:
            return work.result(timeout=max(self.timeout_s - (time.monotonic() - started), 0))
        except TimeoutError:
            self._abandon(work, weight)
            raise DeadlineExceeded(self._timeout_message()) from None

    def _submit(self, fn: Callable[..., T], *args: object, weight: int = 1) -> Future[T]:
        """Hand the work (and its already taken slots) to the pool."""
        try:
            return self._pool.submit(self._run_and_leave, fn, *args, weight=weight)
        except BaseException:
            self.leave(weight)
            raise

    def _abandon(self, work: Future[T], weight: int = 1) -> None:
        """After a timeout: drop the work if it has not started (freeing its slots now)."""
        if work.cancel():
            self.leave(weight)

    def busy_message(self) -> str:
        return f"The server is busy (its {self.limit} image slots are taken); retry in {RETRY_AFTER_S} s."

    def _queue_message(self) -> str:
        return (
            f"The server is busy (the prediction could not start within {self.queue_timeout_s:g} s); "
            f"retry in {RETRY_AFTER_S} s."
        )

    def _timeout_message(self) -> str:
        return (
            f"The prediction took longer than the {self.timeout_s:g} s limit (the server is overloaded "
            "or the image is unusually slow to decode); retry later."
        )

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _consume(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
