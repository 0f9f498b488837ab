"""Which runtime serves, decided once at start-up from the settings and what the bake step exported.

The server never converts a model: a choice whose file was not baked stops start-up with one line that
says how to bake it. The runtime module is imported only for the runtime chosen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from space.backends import Backend
from space.backends.registry import REFERENCE, RUNTIMES, RuntimeSpec, by_name, create_backend, summary
from space.errors import ModelUnavailable
from space.model.folder import has_pytorch_weights, read_optimized


@dataclass(frozen=True)
class Choice:
    """The runtime and precision to serve, and the bake step's report when it baked exactly this."""

    runtime: RuntimeSpec
    precision: str
    optimized: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.runtime.label(self.precision)


def keep_torch_out(choice: Choice) -> None:
    """In a process that serves ``choice`` and nothing else, make torch look absent unless it serves.

    transformers imports torch whenever it is installed, which cost an OpenVINO server of ViT-B/16 int8
    300 MB that it never used (752 MB at start-up, 451 MB without; the lean image has no torch at all). A
    ``None`` in ``sys.modules`` is Python's own way to say a module is absent: importing it raises
    ImportError and ``importlib.util.find_spec`` answers None. Call it before transformers is imported.
    """
    if choice.runtime is not REFERENCE[0]:
        sys.modules.setdefault("torch", None)  # type: ignore[arg-type]


def choose(backend: str, precision: str) -> Choice:
    """The pair by name, or a message that says what to use when it does not exist."""
    try:
        runtime = by_name(backend)
    except KeyError:
        names = ", ".join(spec.name for spec in RUNTIMES)
        raise ModelUnavailable(f"SPACE_BACKEND={backend!r} is unknown; use one of auto, {names}.") from None
    if precision not in runtime.precisions:
        raise ModelUnavailable(
            f"SPACE_PRECISION={precision!r} is not available with SPACE_BACKEND={backend}; it supports "
            f"{', '.join(runtime.precisions)} (every runtime's precisions: {summary()})."
        )
    return Choice(runtime, precision)


def resolve_choice(model_dir: Path, backend: str, precision: str) -> Choice:
    """Which runtime/precision to serve: the settings, with ``auto`` meaning the baked choice.

    ``auto`` without a baked ``optimized.json`` serves the reference, fp32 PyTorch.
    """
    baked = read_optimized(model_dir)
    if backend == "auto" and precision == "auto":
        if baked:
            return Choice(by_name(baked["backend"]), baked["precision"], baked)
        return Choice(*REFERENCE)
    if backend == "auto":
        backend = baked["backend"] if baked and baked["precision"] == precision else RUNTIMES[0].name
    if precision == "auto":
        precision = baked["precision"] if baked and baked["backend"] == backend else "fp32"
    choice = choose(backend, precision)
    match = baked if baked and (baked["backend"], baked["precision"]) == (backend, precision) else None
    return Choice(choice.runtime, precision, match)


def bake_hint(model_dir: Path, choice: Choice) -> str:
    """The command that bakes ``choice`` for this folder, for start-up errors."""
    optimize = f"--optimize {choice.runtime.name} --precision {choice.precision}"
    if (choice.runtime, choice.precision) == REFERENCE:
        optimize = "--optimize none"
    return f"python -m space bake --model SOURCE --output {model_dir}-{choice.precision} {optimize}"


def model_file(model_dir: Path, choice: Choice) -> Path:
    """The file the chosen runtime loads; stops start-up with how to bake it when it is missing."""
    name = choice.runtime.file_for(choice.precision)
    if name is None:
        if not has_pytorch_weights(model_dir):
            raise ModelUnavailable(
                f"SPACE_BACKEND={choice.runtime.name} needs PyTorch weights, and {model_dir} holds none (it "
                f"was baked lean for another runtime). The server never converts a model: serve what was "
                f"baked (SPACE_BACKEND=auto) or bake for PyTorch: {bake_hint(model_dir, choice)} (SOURCE: "
                "the Hub id or the original model folder)."
            )
        return model_dir
    file = model_dir / name
    if not file.is_file():
        raise ModelUnavailable(
            f"{choice.name} was asked for (SPACE_BACKEND/SPACE_PRECISION) but {model_dir} holds no baked "
            f"{file.name}, and the server never converts a model. Bake it: {bake_hint(model_dir, choice)} "
            "(SOURCE: the Hub id or this folder), or serve what was baked (SPACE_BACKEND=auto)."
        )
    return file


def load_backend(model_dir: Path, choice: Choice, threads: int, workers: int = 1) -> Backend:
    """The serving backend for ``choice``, importing only its runtime; raises ``ModelUnavailable``."""
    return create_backend(choice.runtime, model_file(model_dir, choice), choice.precision, threads, workers)
