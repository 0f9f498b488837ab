"""Inference backends beyond eager PyTorch fp32, the export that bakes them, and the accuracy guard.

Why: on a few CPU cores, PyTorch fp32 uses a fraction of the hardware. ONNX Runtime (fp32, or int8 with
dynamic quantisation of the matrix multiplies) and PyTorch bf16 are several times faster. Each optimised
model is made once, at bake time, by :func:`export_optimized`, which refuses a model whose outputs drift
from the fp32 PyTorch reference beyond :data:`MIN_COSINE` / :data:`MIN_TOP1_AGREEMENT`. The server then
loads the baked file; see :func:`create_backend` for what happens when it is missing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from space.errors import ModelUnavailable

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")
SUPPORTED = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8")}
OPTIMIZED_MANIFEST = "optimized.json"  # written beside the model by export_optimized
# The accuracy bound: every example photo keeps its fp32 top-1 label, and the logits of every fixed input
# keep a cosine similarity of at least MIN_COSINE with fp32 PyTorch's.
MIN_COSINE = 0.99
MIN_TOP1_AGREEMENT = 1.0
GUARD_INPUTS = 8
GUARD_SEED = 20240607


class AccuracyError(ModelUnavailable):
    """The optimised model drifts from the fp32 reference beyond the stated bound."""


# --- CPU: what this process may use, and what the hardware offers ------------------------------------


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by the cgroup CPU quota (v2, then v1)."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU limit in CPUs (e.g. 1.5), or None when unlimited or unknown."""
    try:
        quota, period = (
            (root / "cpu.max").read_text().split()[:2]
        )  # cgroup v2: "max 100000" or "150000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags (avx512_vnni, avx512_bf16, amx_int8, ...), empty if unknown."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def candidates(flags: set[str] | None = None) -> list[tuple[str, str]]:
    """(backend, precision) pairs, fastest first on this CPU; the bake step keeps the first that passes.

    int8 matrix multiplies need VNNI (or AMX) to be fast; bf16 needs AVX512-BF16 (or AMX). Without them
    ONNX Runtime fp32 is still about twice as fast as PyTorch fp32.
    """
    flags = cpu_flags() if flags is None else flags
    order: list[tuple[str, str]] = []
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        order.append(("onnxruntime", "int8"))
    if flags & {"avx512_bf16", "amx_bf16"}:
        order.append(("torch", "bf16"))
    order.append(("onnxruntime", "fp32"))
    order.append(("torch", "fp32"))
    return order


def check_choice(backend: str, precision: str) -> None:
    """A 4xx-style message when a backend/precision pair does not exist."""
    if backend not in SUPPORTED:
        raise ModelUnavailable(
            f"SPACE_BACKEND={backend!r} is unknown; use one of auto, {', '.join(BACKENDS)}."
        )
    if precision not in SUPPORTED[backend]:
        raise ModelUnavailable(
            f"SPACE_PRECISION={precision!r} is not available with SPACE_BACKEND={backend}; it supports "
            f"{', '.join(SUPPORTED[backend])} (int8 needs onnxruntime, bf16 needs torch)."
        )


# --- Backends -----------------------------------------------------------------------------------------


class TorchBf16Backend:
    """PyTorch with bfloat16 weights and activations: about 3x fp32 on CPUs with AVX512-BF16 or AMX."""

    name = "torch-bf16"
    max_batch = 8  # bf16 matrix multiplies run about 20-40% more images/s at batch 8 than at 1

    def __init__(self, model: Any) -> None:
        import torch

        self._model = model.eval().to(torch.bfloat16)
        self._lock = threading.Lock()

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            output = self._model(pixel_values=torch.from_numpy(pixel_values).to(torch.bfloat16))
        return output.logits.float().numpy()


class OnnxBackend:
    """ONNX Runtime on the CPU, with two sessions of the same model so that both latency and throughput
    use every core: a call that runs alone gets the ``threads``-wide session; calls that overlap each
    run on their own caller thread in the one-thread session, with no hand-offs between threads.

    Measured on 2 cores, ViT-B/16 int8: a lone call p50 about 70 ms wide, 120 ms narrow; two callers
    16.4 images/s narrow against 13.0 on one shared two-thread pool (10.6 when that pool spins). The
    pools do not spin: spinning moved a lone call's p50 by -5 to +17 ms over five interleaved runs,
    gave one client of the server no lower p50, and cost it about 20% more CPU per request.
    """

    # Measured on 2 cores: batches do not raise ONNX Runtime's images/s (int8 or fp32) the way calls
    # running at once do, and they add waiting; so by default requests are not batched for it.
    max_batch = 1

    def __init__(self, path: Path, precision: str, threads: int = 1, workers: int = 1) -> None:
        self._wide = _onnx_session(path, threads)
        # The one-thread session exists only where calls can overlap and the wide one is not it already.
        self._narrow = _onnx_session(path, threads=1) if workers > 1 and threads > 1 else self._wide
        self._input = self._wide.get_inputs()[0].name
        self._lock = threading.Lock()
        self._running = 0
        self.runs = {"wide": 0, "narrow": 0}  # calls per session (the tests read it)
        self.name = f"onnxruntime-{precision}"
        self.path = path

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        with self._lock:
            self._running += 1
            wide = self._running == 1
            self.runs["wide" if wide else "narrow"] += 1
        try:
            session = self._wide if wide else self._narrow
            return session.run(None, {self._input: pixel_values})[0]
        finally:
            with self._lock:
                self._running -= 1


def _onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads that spin would take the cores that decode and serve HTTP.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --- Export and accuracy guard -------------------------------------------------------------------------


@dataclass
class GuardReport:
    """How close an optimised model is to fp32 PyTorch, and whether that is within the bound."""

    backend: str
    min_cosine: float
    mean_cosine: float
    inputs: int
    photos: int
    top1_agreement: float | None
    disagreements: list[str]
    bound_cosine: float
    bound_top1: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def guard_inputs(image_size: tuple[int, int], count: int = GUARD_INPUTS) -> np.ndarray:
    """The fixed inputs of the logit-similarity check: seeded normalised noise, the same on every run."""
    height, width = image_size
    rng = np.random.default_rng(GUARD_SEED)
    return rng.standard_normal((count, 3, height, width), dtype=np.float32)


def check_accuracy(
    reference: Any,
    candidate: Any,
    processor: Any,
    image_size: tuple[int, int],
    photos: Sequence[Path] = (),
    min_cosine: float = MIN_COSINE,
    min_top1: float = MIN_TOP1_AGREEMENT,
) -> GuardReport:
    """Compare ``candidate`` with the fp32 ``reference`` backend on the fixed inputs and the photos."""
    from PIL import Image

    batches = [guard_inputs(image_size)]
    names = [p.name for p in photos]
    if photos:
        images = []
        for path in photos:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        pixels = processor(images=images, return_tensors="np")["pixel_values"]
        batches.append(np.ascontiguousarray(pixels, dtype=np.float32))
    ref = [_rows(reference, batch) for batch in batches]
    got = [_rows(candidate, batch) for batch in batches]
    all_ref, all_got = np.concatenate(ref), np.concatenate(got)
    cosine = (all_ref * all_got).sum(1) / (
        np.linalg.norm(all_ref, axis=1) * np.linalg.norm(all_got, axis=1) + 1e-12
    )
    agreement, disagreements = None, []
    if photos:
        same = ref[1].argmax(1) == got[1].argmax(1)
        agreement = float(same.mean())
        disagreements = [name for name, ok in zip(names, same, strict=True) if not ok]
    passed = bool(cosine.min() >= min_cosine and (agreement is None or agreement >= min_top1))
    return GuardReport(
        backend=candidate.name,
        min_cosine=round(float(cosine.min()), 6),
        mean_cosine=round(float(cosine.mean()), 6),
        inputs=len(all_ref),
        photos=len(names),
        top1_agreement=agreement,
        disagreements=disagreements,
        bound_cosine=min_cosine,
        bound_top1=min_top1,
        passed=passed,
    )


def _rows(backend: Any, batch: np.ndarray) -> np.ndarray:
    """One image at a time: the serving path runs batch sizes from 1 up, and this keeps memory flat."""
    return np.concatenate(
        [np.asarray(backend.logits(batch[i : i + 1]), dtype=np.float64) for i in range(len(batch))]
    )


def export_optimized(
    model_dir: Path,
    out_dir: Path,
    backend: str = "auto",
    precision: str = "auto",
    photos: Sequence[Path] = (),
    min_cosine: float = MIN_COSINE,
    min_top1: float = MIN_TOP1_AGREEMENT,
) -> Path:
    """Make the optimised model for ``model_dir`` in ``out_dir``, guard its accuracy, and describe it.

    ``backend``/``precision`` ``auto`` tries :func:`candidates` fastest first and keeps the first that
    passes the guard. Writes ``out_dir/optimized.json`` (choice, file, guard report) and, for ONNX
    Runtime, ``out_dir/model-<precision>.onnx``; returns the path of ``optimized.json``. Raises
    :class:`AccuracyError` (leaving nothing behind) when no requested choice passes the guard.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if backend == "auto" or precision == "auto":
        choices = [(b, p) for b, p in candidates() if backend in ("auto", b) and precision in ("auto", p)]
    else:
        check_choice(backend, precision)
        choices = [(backend, precision)]
    if not choices:
        raise ModelUnavailable(f"no backend supports backend={backend!r} precision={precision!r}")
    reference, processor, image_size = _reference(model_dir)
    architecture = type(reference.model).__name__
    refused: list[str] = []
    unservable: list[str] = []  # choices that could not even be built or run, not merely inaccurate
    for choice_backend, choice_precision in choices:
        started = time.perf_counter()
        file = out_dir / f"model-{choice_precision}.onnx" if choice_backend == "onnxruntime" else None
        try:
            candidate = _candidate(
                model_dir, reference, processor, image_size, choice_backend, choice_precision, file
            )
            report = check_accuracy(reference, candidate, processor, image_size, photos, min_cosine, min_top1)
        except Exception as error:  # an architecture this backend cannot export or run: refused here
            if file is not None:
                file.unlink(missing_ok=True)
            why = f"{choice_backend} {choice_precision} cannot serve {architecture}: {_first_line(error)}"
            log.warning("backend refused", extra={"reason": why})
            refused.append(why)
            unservable.append(why)
            continue
        seconds = round(time.perf_counter() - started, 1)
        log.info("accuracy guard", extra={"report": report.as_dict(), "seconds": seconds})
        if report.passed:
            manifest = {
                "backend": choice_backend,
                "precision": choice_precision,
                "file": file.name if file else None,
                "guard": report.as_dict(),
                "refused": refused,
                "cpu_flags": sorted(
                    cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16"}
                ),
            }
            for stale in out_dir.glob("model-*.onnx"):
                if stale != file:
                    stale.unlink()
            path = out_dir / OPTIMIZED_MANIFEST
            path.write_text(json.dumps(manifest, indent=2) + "\n")
            return path
        refused.append(
            f"{choice_backend} {choice_precision}: min cosine {report.min_cosine} (bound {min_cosine}), "
            f"top-1 agreement {report.top1_agreement} (bound {min_top1}), disagreeing {report.disagreements}"
        )
        if file is not None:
            file.unlink(missing_ok=True)
    if len(unservable) == len(refused):
        raise ModelUnavailable(
            "; ".join(unservable) + ". Serve it with PyTorch instead (--optimize torch --precision fp32, "
            "or no --optimize): PyTorch runs every transformers architecture."
        )
    raise AccuracyError(
        "the optimised model drifts from fp32 PyTorch beyond the bound: " + "; ".join(refused)
    )


def _candidate(
    model_dir: Path,
    reference: Any,
    processor: Any,
    image_size: tuple[int, int],
    backend: str,
    precision: str,
    file: Path | None,
) -> Any:
    """The backend to check against the reference: exported (ONNX) or converted (bf16) as needed."""
    if backend == "onnxruntime":
        from space.classifier import PROBE_SIZE, processed_size

        portrait = processed_size(processor, PROBE_SIZE[::-1])  # image_size came from a landscape image
        if portrait != image_size:  # an exported graph has one input size; PyTorch takes any
            raise ModelUnavailable(
                f"the image processor keeps the aspect ratio ({image_size[0]}x{image_size[1]} and "
                f"{portrait[0]}x{portrait[1]} inputs), and an ONNX export has one input size"
            )
        assert file is not None
        _export_onnx(reference.model, image_size, file, precision)
        return OnnxBackend(file, precision, threads=available_cpus())
    if precision == "bf16":
        return TorchBf16Backend(_load_torch(model_dir))
    return reference


def _first_line(error: Exception) -> str:
    """The first line of an error, bounded: exporter errors can be pages long."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:300]}"


class _Reference:
    """fp32 PyTorch, the reference every optimised backend is compared with."""

    name = "torch"

    def __init__(self, model: Any) -> None:
        self.model = model

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(pixel_values=torch.from_numpy(pixel_values)).logits.float().numpy()


def _load_torch(model_dir: Path) -> Any:
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(model_dir, local_files_only=True).eval()


def _reference(model_dir: Path) -> tuple[_Reference, Any, tuple[int, int]]:
    from transformers import AutoImageProcessor

    from space.classifier import processed_size

    processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    return _Reference(_load_torch(model_dir)), processor, processed_size(processor)


def _export_onnx(model: Any, image_size: tuple[int, int], path: Path, precision: str) -> None:
    """torch.onnx.export (TorchScript exporter: no extra packages), then dynamic int8 if asked."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values=pixel_values).logits

    example = torch.zeros(1, 3, *image_size)
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = Path(scratch) / "model.onnx"
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Logits(model).eval(),  # a new Module trains by default; export restores that mode
                (example,),
                str(fp32),
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Only the matrix multiplies: that is where the time goes in a ViT, and ConvInteger is slow.
            quantize_dynamic(fp32, path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        else:
            shutil.move(fp32, path)
    model.eval()


# --- Loading at serve time -----------------------------------------------------------------------------


def read_optimized(model_dir: Path) -> dict[str, Any] | None:
    """The bake step's choice (``optimized.json``) in the model folder, if there is one."""
    path = Path(model_dir) / OPTIMIZED_MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("unreadable %s; ignoring it", path)
        return None


def resolve_choice(model_dir: Path, backend: str, precision: str) -> tuple[str, str, dict[str, Any] | None]:
    """Which backend/precision to serve: the settings, with ``auto`` meaning the baked choice.

    ``auto`` without a baked ``optimized.json`` serves fp32 PyTorch (the reference): the server never
    converts a model it was not asked to convert.
    """
    baked = read_optimized(model_dir)
    if backend == "auto" and precision == "auto":
        if baked:
            return baked["backend"], baked["precision"], baked
        return "torch", "fp32", None
    if backend == "auto":
        backend = (
            baked["backend"]
            if baked and baked["precision"] == precision
            else ("onnxruntime" if precision == "int8" else "torch")
        )
    if precision == "auto":
        precision = baked["precision"] if baked and baked["backend"] == backend else "fp32"
    check_choice(backend, precision)
    match = baked if baked and (baked["backend"], baked["precision"]) == (backend, precision) else None
    return backend, precision, match


def create_backend(
    model_dir: Path,
    network: Any | None,
    backend: str,
    precision: str,
    threads: int,
    workers: int = 1,
    cache_dir: Path | None = None,
) -> Any:
    """The serving backend. ONNX Runtime uses the baked file; when it is missing the model is exported at
    start-up (with the accuracy guard, into ``cache_dir`` or a temporary folder), logged as a WARNING
    because it costs tens of seconds and memory that baking avoids."""
    if backend == "torch":
        from space.classifier import TorchBackend

        assert network is not None
        return TorchBf16Backend(network) if precision == "bf16" else TorchBackend(network)
    file = Path(model_dir) / f"model-{precision}.onnx"
    if not file.is_file() and not (cache_dir and (cache_dir / file.name).is_file()):
        target = cache_dir or Path(tempfile.mkdtemp(prefix="vit-space-onnx-"))
        log.warning(
            "no baked %s; exporting the model at start-up into %s (slow). Bake it instead: "
            "python -m space bake exports and checks it once.",
            file.name,
            target,
        )
        export_optimized(Path(model_dir), target, backend, precision)
        file = target / file.name
    elif not file.is_file():
        file = cache_dir / file.name  # type: ignore[operator]
    return OnnxBackend(file, precision, threads, workers)
