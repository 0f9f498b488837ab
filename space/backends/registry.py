"""Every inference runtime the app knows, declared once: its name, precisions, the file it loads, how to
create it, its version, its default workers and batch limit, and which precisions the bake measures.

The bake, the settings, the serving plan and the benchmark ask this module; no other module spells a
runtime's name. It imports no runtime: :func:`create_backend` imports the chosen one's module only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from space.model.cpu import cpu_flags

if TYPE_CHECKING:
    import numpy as np


class Backend(Protocol):
    """What every runtime's module creates: a batch of preprocessed pixels (N, C, H, W float32) in,
    logits (N, num_labels) out."""

    name: str

    def logits(self, pixel_values: np.ndarray) -> np.ndarray: ...


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # CPUs that compute in bf16; elsewhere bf16 is fp32 again


@dataclass(frozen=True)
class RuntimeSpec:
    """One inference runtime, as the rest of the app sees it."""

    name: str
    precisions: tuple[str, ...]
    # The file it loads from the model folder ({precision} filled in); None: the folder's PyTorch weights.
    file: str | None
    module: str  # the one module that imports the runtime; it has create(path, precision, threads, workers)
    package: str  # the distribution whose version /info reports
    max_batch: int  # most images per call by default: more where batches were measured to help
    workers_per_cpu: bool = False  # True: one call per CPU at once (calls that overlap help, batches don't)
    # What `bake --optimize auto` measures, in tie-break order: only runtimes the lean image carries.
    candidates: tuple[str, ...] = ()
    needs: dict[str, frozenset[str]] = field(default_factory=dict)  # CPU flags a candidate precision needs

    def default_workers(self, cpus: int) -> int:
        """Inference calls at once: one per CPU, or one call of every core with requests batched."""
        return cpus if self.workers_per_cpu else 1

    def file_for(self, precision: str) -> str | None:
        return self.file.format(precision=precision) if self.file else None

    def version(self) -> str:
        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError:
            return "unknown"

    def label(self, precision: str) -> str:
        """How /info, logs and metrics name it: ``<runtime>-<precision>``."""
        return f"{self.name}-{precision}"


OPENVINO = RuntimeSpec(
    name="openvino",
    precisions=("fp32", "bf16", "int8-weights", "int8"),
    file="openvino-{precision}.xml",
    module="space.backends.openvino_runtime",
    package="openvino",
    max_batch=8,
    candidates=("int8", "bf16", "int8-weights", "fp32"),
    needs={"bf16": BF16_FLAGS},
)
ONNX_RUNTIME = RuntimeSpec(
    name="onnxruntime",
    precisions=("fp32", "int8"),
    file="model-{precision}.onnx",
    module="space.backends.onnx_runtime",
    package="onnxruntime",
    max_batch=1,
    workers_per_cpu=True,
    candidates=("int8", "fp32"),
)
TORCH = RuntimeSpec(
    name="torch",
    precisions=("fp32", "bf16"),
    file=None,
    module="space.backends.pytorch",
    package="torch",
    max_batch=8,
)
RUNTIMES = (OPENVINO, ONNX_RUNTIME, TORCH)
NAMES = tuple(spec.name for spec in RUNTIMES)
PRECISIONS = tuple(dict.fromkeys(p for spec in RUNTIMES for p in spec.precisions))
REFERENCE = (
    TORCH,
    "fp32",
)  # what every optimised runtime is compared with, and served when nothing was baked


def by_name(name: str) -> RuntimeSpec:
    for spec in RUNTIMES:
        if spec.name == name:
            return spec
    raise KeyError(name)


def pairs() -> list[tuple[RuntimeSpec, str]]:
    """Every (runtime, precision) the app can serve, in declaration order (the benchmark's ``all``)."""
    return [(spec, precision) for spec in RUNTIMES for precision in spec.precisions]


def candidates(flags: set[str] | None = None) -> list[tuple[RuntimeSpec, str]]:
    """The (runtime, precision) pairs ``bake --optimize auto`` measures on a CPU with ``flags``; it keeps
    the fastest that passes the accuracy guard (this order only breaks ties). Every pair runs on any x86-64
    CPU, and the fp32 ones always pass the guard: the safe fallback."""
    flags = cpu_flags() if flags is None else flags
    found = [
        (spec, precision)
        for spec in RUNTIMES
        for precision in spec.candidates
        if precision not in spec.needs or flags & spec.needs[precision]
    ]
    return sorted(found, key=lambda pair: pair[1] == "fp32")  # fp32, the slow fallback, last


def summary() -> str:
    """The precisions of each runtime, for help texts and errors."""
    return "; ".join(f"{spec.name}: {', '.join(spec.precisions)}" for spec in RUNTIMES)


def create_backend(spec: RuntimeSpec, path: Path, precision: str, threads: int, workers: int) -> Backend:
    """The serving backend, importing only this runtime's module."""
    module = importlib.import_module(spec.module)
    return module.create(path, precision, threads, workers)
