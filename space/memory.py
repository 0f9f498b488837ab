"""Keep the server's memory flat under sustained load (glibc's allocator, tuned once at start-up).

Under sustained load (``tests/test_load.py``: 200 connections) glibc's defaults let the server's RSS grow
without end (docs/performance.md has the figures), because every upload body and decoded image is a
large, short-lived buffer freed on a different thread. glibc raises its mmap threshold after the
first such free, so later ones land in per-thread arenas (up to 8 per CPU) that fragment and are rarely
returned. A fixed mmap threshold (large buffers go straight back to the kernel) and two arenas keep RSS
within a few percent. Operators can still set ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENAS = 2


def limit_fragmentation() -> bool:
    """Apply the settings above unless the environment already chose; False where it is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = True
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied &= mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    if "MALLOC_ARENA_MAX" not in os.environ:
        applied &= mallopt(M_ARENA_MAX, ARENAS) == 1
    if not applied:
        log.warning("could not tune the memory allocator (not glibc?); RSS may grow under load")
    return applied
