"""OS thread names, so that the threads that run the model can be told from those that serve
(``/proc/<pid>/task/*/comm``, ``top -H``, py-spy): the bench reads the serving threads' CPU per image
from them. Python names its threads for itself only; the kernel's name is what a thread inherits when it
starts another, so the runtimes' own pools, started inside :func:`named`, carry the name too.
Linux only; elsewhere nothing is renamed."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

INFERENCE = "inference"  # the name's prefix for every thread that runs the model
_SET_NAME, _GET_NAME = 15, 16  # prctl(2): PR_SET_NAME, PR_GET_NAME


def _prctl() -> object | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()


def set_name(name: str) -> None:
    """The calling thread's OS name (the kernel keeps 15 bytes)."""
    if _PRCTL is not None:
        _PRCTL(_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)  # type: ignore[operator]


def get_name() -> str:
    if _PRCTL is None:
        return ""
    buffer = ctypes.create_string_buffer(16)
    _PRCTL(_GET_NAME, buffer, 0, 0, 0)  # type: ignore[operator]
    return buffer.value.decode(errors="replace")


@contextmanager
def named(name: str) -> Iterator[None]:
    """The calling thread named ``name`` while inside; threads started meanwhile keep the name."""
    before = get_name()
    set_name(name)
    try:
        yield
    finally:
        set_name(before)
