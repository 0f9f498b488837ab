"""How fast a backend runs on this machine, bare (in process: no HTTP, no decoding), as the server runs it.

The bake step measures every candidate with it to choose the fastest that passes the guard, and
``python -m space bench --bare`` reports it next to the served figures: the gap is what serving costs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from space.backends import Backend
from space.serving.batching import Batcher


def measure_speed(
    backend: Backend, image_size: tuple[int, int], workers: int, max_batch: int, seconds: float = 3.0
) -> dict[str, float | int]:
    """Three figures on one image-sized input, ``seconds`` each:

    - ``lone_p50_ms``: one call of one image at a time, with a lone client's gaps (idle threads sleep);
    - ``batch_images_per_s``: calls of ``max_batch`` images, ``workers`` at once;
    - ``images_per_s``: single images from many callers through the batcher with the serving plan
      (``workers``, ``max_batch``): what the server's inference can do under load.
    """
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((1, 3, *image_size), dtype=np.float32)
    backend.logits(pixels)  # warm
    lone: list[float] = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or len(lone) < 5:
        started = time.perf_counter()
        backend.logits(pixels)
        lone.append(time.perf_counter() - started)
        time.sleep(0.01)
    batch = np.repeat(pixels, max_batch, axis=0)
    batch_rate = _rate(lambda: len(backend.logits(batch)), workers, seconds)
    batcher = Batcher(backend.logits, max_batch, max_wait_ms=5.0, workers=workers)
    try:
        plan_rate = _rate(lambda: len(batcher.submit(pixels[0])[None]), workers * max_batch, seconds)
    finally:
        batcher.close()
    return {
        "lone_p50_ms": round(1000 * float(np.median(lone)), 1),
        "batch_images_per_s": round(batch_rate, 2),
        "images_per_s": round(plan_rate, 2),
        "workers": workers,
        "max_batch": max_batch,
    }


def _rate(call: Callable[[], int], callers: int, seconds: float) -> float:
    """Images per second from ``callers`` threads each repeating ``call()`` (which returns its images)."""
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < stop:
            counts[index] += call()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)
