"""Admission control: a bounded number of predictions in flight, a time limit on each, and clean refusals.

A public endpoint must not queue without limit: past ``max_in_flight`` admitted predictions, a new one is
refused at once with 503 and ``Retry-After`` (the client retries, or a load balancer tries another
replica), and one that takes longer than ``request_timeout_s`` (queueing behind others included) is
answered 504. Admitted work waits in this module's small thread pool (few threads: decoding and
preprocessing hold the GIL part of the time, and many threads would slow the event loop that answers the
503s). A prediction that times out while still queued is dropped and frees its slot at once; one that
is already running keeps its slot until its thread finishes, so the bound holds even for work the client
stopped waiting for. How inference is scheduled behind this (one model lock, a batcher) does not matter
here: callers hand in a plain blocking function.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

T = TypeVar("T")

RETRY_AFTER_S = 1
DEFAULT_WORKERS = 4  # threads running admitted predictions; the rest of the admitted ones wait in order


class Overloaded(Exception):
    """Every admission slot is taken; the client should retry shortly (503 with Retry-After)."""


class DeadlineExceeded(Exception):
    """The prediction did not finish within the time limit (504)."""


class Admission:
    """A non-blocking counter of admitted predictions, shared by the API and the UI."""

    def __init__(self, limit: int, timeout_s: float, workers: int = DEFAULT_WORKERS) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self._in_flight = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=min(limit, workers), thread_name_prefix="predict")

    def enter(self, weight: int = 1) -> None:
        """Take ``weight`` slots (an explanation takes several) or raise :class:`Overloaded` at once."""
        with self._lock:
            if self._in_flight + weight > self.limit:
                raise Overloaded(
                    f"The server is busy ({self.limit} predictions in progress); retry in {RETRY_AFTER_S} s."
                )
            self._in_flight += weight

    def leave(self, weight: int = 1) -> None:
        with self._lock:
            self._in_flight -= weight

    def _run_and_leave(self, fn: Callable[..., T], *args: object, weight: int = 1) -> T:
        try:
            return fn(*args)
        finally:
            self.leave(weight)

    async def run(self, fn: Callable[..., T], *args: object, weight: int = 1) -> T:
        """``fn(*args)`` in a worker thread if a slot is free, within the time limit (for async callers)."""
        work = self._submit(fn, *args, weight=weight)
        waiter = asyncio.wrap_future(work)
        try:
            # shield: on timeout, running work goes on (holding its slot) but the client is answered now.
            return await asyncio.wait_for(asyncio.shield(waiter), self.timeout_s)
        except TimeoutError:
            waiter.add_done_callback(_consume)  # no "exception never retrieved" noise from abandoned work
            self._abandon(work, weight)
            raise DeadlineExceeded(self._timeout_message()) from None

    def run_sync(self, fn: Callable[..., T], *args: object, weight: int = 1) -> T:
        """The same for a caller that is itself a worker thread (Gradio runs sync functions in threads)."""
        work = self._submit(fn, *args, weight=weight)
        try:
            return work.result(timeout=self.timeout_s)
        except TimeoutError:
            self._abandon(work, weight)
            raise DeadlineExceeded(self._timeout_message()) from None

    def _submit(self, fn: Callable[..., T], *args: object, weight: int = 1) -> Future[T]:
        self.enter(weight)
        try:
            return self._pool.submit(self._run_and_leave, fn, *args, weight=weight)
        except BaseException:
            self.leave(weight)
            raise

    def _abandon(self, work: Future[T], weight: int = 1) -> None:
        """After a timeout: drop the work if it has not started (freeing its slot now)."""
        if work.cancel():
            self.leave(weight)

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


def install_handlers(app: FastAPI) -> None:
    """503 with ``Retry-After`` for :class:`Overloaded`, 504 for :class:`DeadlineExceeded`."""

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, error: Overloaded) -> JSONResponse:
        return JSONResponse(
            {"error": str(error)}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}
        )

    @app.exception_handler(DeadlineExceeded)
    async def deadline(_: Request, error: DeadlineExceeded) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=504)
