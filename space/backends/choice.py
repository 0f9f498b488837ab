"""Which backend serves, decided once at start-up from the settings and what the bake step exported.

The server never converts a model: a choice whose file was not baked stops start-up with one line that
says how to bake it. The runtime module is imported only for the backend chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from space.backends import Backend
from space.errors import ModelUnavailable
from space.model.folder import has_pytorch_weights, read_optimized

BACKENDS = ("openvino", "onnxruntime", "torch")
SUPPORTED = {
    "openvino": ("fp32", "bf16", "int8-weights", "int8"),
    "onnxruntime": ("fp32", "int8"),
    "torch": ("fp32", "bf16"),
}
# The file each exported runtime loads, in the model folder (PyTorch loads the folder itself).
FILES = {"openvino": "openvino-{precision}.xml", "onnxruntime": "model-{precision}.onnx"}


@dataclass(frozen=True)
class Choice:
    """The backend and precision to serve, and the bake step's report when it baked exactly this."""

    backend: str
    precision: str
    optimized: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"


def check_choice(backend: str, precision: str) -> None:
    """A message that says what to use when a backend/precision pair does not exist."""
    if backend not in SUPPORTED:
        raise ModelUnavailable(
            f"SPACE_BACKEND={backend!r} is unknown; use one of auto, {', '.join(BACKENDS)}."
        )
    if precision not in SUPPORTED[backend]:
        raise ModelUnavailable(
            f"SPACE_PRECISION={precision!r} is not available with SPACE_BACKEND={backend}; it supports "
            f"{', '.join(SUPPORTED[backend])} (openvino supports all four: fp32, bf16, int8-weights, int8)."
        )


def resolve_choice(model_dir: Path, backend: str, precision: str) -> Choice:
    """Which backend/precision to serve: the settings, with ``auto`` meaning the baked choice.

    ``auto`` without a baked ``optimized.json`` serves fp32 PyTorch (the reference).
    """
    baked = read_optimized(model_dir)
    if backend == "auto" and precision == "auto":
        if baked:
            return Choice(baked["backend"], baked["precision"], baked)
        return Choice("torch", "fp32")
    if backend == "auto":
        backend = baked["backend"] if baked and baked["precision"] == precision else "openvino"
    if precision == "auto":
        precision = baked["precision"] if baked and baked["backend"] == backend else "fp32"
    check_choice(backend, precision)
    match = baked if baked and (baked["backend"], baked["precision"]) == (backend, precision) else None
    return Choice(backend, precision, match)


def bake_hint(model_dir: Path, choice: Choice) -> str:
    """The command that bakes ``choice`` for this folder, for start-up errors."""
    optimize = f"--optimize {choice.backend} --precision {choice.precision}"
    if choice.backend == "torch" and choice.precision == "fp32":
        optimize = "--optimize none"
    return f"python -m space bake --model SOURCE --output {model_dir}-{choice.precision} {optimize}"


def model_file(model_dir: Path, choice: Choice) -> Path:
    """The file the chosen runtime loads; stops start-up with how to bake it when it is missing."""
    if choice.backend == "torch":
        if not has_pytorch_weights(model_dir):
            raise ModelUnavailable(
                f"SPACE_BACKEND=torch needs PyTorch weights, and {model_dir} holds none (it was baked "
                f"lean for another runtime). The server never converts a model: serve what was baked "
                f"(SPACE_BACKEND=auto) or bake for PyTorch: {bake_hint(model_dir, choice)} (SOURCE: the "
                "Hub id or the original model folder)."
            )
        return model_dir
    file = model_dir / FILES[choice.backend].format(precision=choice.precision)
    if not file.is_file():
        raise ModelUnavailable(
            f"{choice.name} was asked for (SPACE_BACKEND/SPACE_PRECISION) but {model_dir} holds no baked "
            f"{file.name}, and the server never converts a model. Bake it: {bake_hint(model_dir, choice)} "
            "(SOURCE: the Hub id or this folder), or serve what was baked (SPACE_BACKEND=auto)."
        )
    return file


def create_backend(model_dir: Path, choice: Choice, threads: int, workers: int = 1) -> Backend:
    """The serving backend for ``choice``, importing only its runtime; raises ``ModelUnavailable``."""
    file = model_file(model_dir, choice)
    if choice.backend == "torch":
        from space.backends import pytorch

        return pytorch.create(model_dir, choice.precision, threads)
    if choice.backend == "openvino":
        from space.backends import openvino_runtime

        return openvino_runtime.OpenVinoBackend(file, choice.precision, threads)
    from space.backends import onnx_runtime

    return onnx_runtime.OnnxBackend(file, choice.precision, threads, workers)


def runtime_version(choice: Choice) -> dict[str, str]:
    """The version of the runtime serving ``choice`` (already imported by :func:`create_backend`)."""
    if choice.backend == "torch":
        from space.backends import pytorch

        return {"torch": pytorch.VERSION}
    if choice.backend == "openvino":
        from space.backends import openvino_runtime

        return {"openvino": openvino_runtime.VERSION}
    from space.backends import onnx_runtime

    return {"onnxruntime": onnx_runtime.VERSION}
