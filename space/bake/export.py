"""Bake step, export: makes the optimised serving backend (OpenVINO, ONNX Runtime, or PyTorch bf16) once,
checks it with the accuracy guard, and records the choice in ``optimized.json`` beside the model. With
``auto``, every candidate that passes the guard is measured on this CPU and the fastest is kept.

Why at bake time: exporting, quantising and calibrating take tens of seconds, memory, torch, ``onnx`` and
NNCF; the server only loads what was baked here (it never converts a model). torch is reached through
the PyTorch backend (:mod:`space.backends.pytorch`), the one module that imports it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from space.backends import Backend
from space.backends.choice import choose
from space.backends.registry import ONNX_RUNTIME, RuntimeSpec, by_name, candidates
from space.bake.calibration import CALIBRATION_SIZE, calibration_inputs, calibration_photos
from space.bake.guard import MIN_COSINE, MIN_TOP1_AGREEMENT, AccuracyError, evaluation_inputs, judge, rows
from space.bake.openvino_export import MAX_FLOAT_GROUPS, VALIDATION_SEED, VALIDATION_SIZE, convert, quantize
from space.bake.probe import MAX_BATCH, probe
from space.bake.speed import measure_speed
from space.errors import ModelUnavailable
from space.model.cpu import available_cpus, cpu_flags, cpu_model
from space.model.folder import OPTIMIZED_MANIFEST
from space.serving.classifier import PROBE_SIZE, processed_size

log = logging.getLogger(__name__)

MEASURE_SECONDS = 2.0  # per figure and candidate: three figures, so about 6 s each on top of the export


def export_optimized(
    model_dir: Path,
    out_dir: Path,
    backend: str = "auto",
    precision: str = "auto",
    photos: Sequence[Path] = (),
    min_cosine: float = MIN_COSINE,
    min_top1: float = MIN_TOP1_AGREEMENT,
    calibration_dir: Path | None = None,
    measure_seconds: float | None = None,
    calibration_size: int | None = None,
    float_groups: int | None = None,
) -> Path:
    """Make the optimised model for ``model_dir`` in ``out_dir``, guard its accuracy, and describe it.

    One backend and precision: it is kept if it passes the guard. ``auto`` for either: every candidate
    (:func:`candidates`) that passes the guard is measured on this CPU (:mod:`space.bake.speed`) and
    the fastest under load is kept. Writes ``out_dir/optimized.json`` (choice, file, guard report, the
    measurements and why) and the runtime's file; returns the path of ``optimized.json``. Raises
    :class:`AccuracyError` (leaving nothing behind) when no requested choice passes the guard.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if backend == "auto" or precision == "auto":
        choices = [
            (spec, p)
            for spec, p in candidates()
            if backend in ("auto", spec.name) and precision in ("auto", p)
        ]
        if backend != "auto" and not choices:  # a runtime the lean image lacks: every precision of it
            spec = by_name(backend)
            choices = [(spec, p) for p in spec.precisions if precision in ("auto", p)]
    else:
        choices = [(choose(backend, precision).runtime, precision)]
    if not choices:
        raise ModelUnavailable(f"no backend supports backend={backend!r} precision={precision!r}")
    measure = len(choices) > 1
    measure_seconds = measure_seconds or MEASURE_SECONDS
    ref, processor, image_size = reference(model_dir)
    sources = Sources(ref, processor, image_size, photos, calibration_dir, calibration_size, float_groups)
    inputs = evaluation_inputs(processor, image_size, photos)
    expected = rows(ref, inputs)
    names = [p.name for p in photos]
    architecture = type(ref.model).__name__
    refused: list[str] = []
    unservable: list[str] = []  # choices that could not even be built or run, not merely inaccurate
    passed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vit-space-export-") as scratch:
        sources.scratch = Path(scratch)
        for runtime, choice_precision in choices:
            choice_backend = runtime.name
            started = time.perf_counter()
            file = _file(out_dir, runtime, choice_precision)
            try:
                got, speed = _run_candidate(
                    model_dir, out_dir, ref, sources, runtime, choice_precision, file, inputs,
                    measure_seconds if measure else None,
                )  # fmt: skip
            except Exception as error:  # an architecture this runtime cannot export or run: refused here
                _remove(file)
                why = f"{choice_backend} {choice_precision} cannot serve {architecture}: {_first_line(error)}"
                log.warning("backend refused", extra={"reason": why})
                refused.append(why)
                unservable.append(why)
                continue
            name = runtime.label(choice_precision)
            report = judge(expected, got, name, names, min_cosine, min_top1)
            seconds = round(time.perf_counter() - started, 1)
            log.info("accuracy guard", extra={"report": report.as_dict(), "seconds": seconds})
            if not report.passed:
                refused.append(
                    f"{choice_backend} {choice_precision}: min cosine {report.min_cosine} (bound "
                    f"{min_cosine}), top-1 agreement {report.top1_agreement} (bound {min_top1}), "
                    f"disagreeing {report.disagreements}"
                )
                _remove(file)
                continue
            entry: dict[str, Any] = {
                "backend": choice_backend,
                "precision": choice_precision,
                "file": file.name if file else None,
                "guard": report.as_dict(),
            }
            if not measure:
                return _write(out_dir, entry, refused, [], sources)
            entry["speed"] = speed
            _log_speed(entry)
            passed.append(entry)
    if passed:
        best = max(passed, key=lambda entry: entry["speed"]["images_per_s"])
        for entry in passed:
            if entry is not best:
                _remove(out_dir / entry["file"] if entry["file"] else None)
        return _write(out_dir, best, refused, passed, sources)
    if len(unservable) == len(refused):
        raise ModelUnavailable(
            "; ".join(unservable) + ". Serve it with PyTorch instead (--optimize torch --precision fp32, "
            "or no --optimize): PyTorch runs every transformers architecture."
        )
    raise AccuracyError(
        "the optimised model drifts from fp32 PyTorch beyond the bound: " + "; ".join(refused)
    )


class Sources:
    """What candidates are made from, each made once and only if needed: the fp32 ONNX export (ONNX
    Runtime and OpenVINO both start from it), and for static int8 the calibration inputs and the held-out
    validation crops with fp32 PyTorch's logits on them."""

    def __init__(
        self,
        reference: Any,  # the fp32 TorchBackend
        processor: Any,
        image_size: tuple[int, int],
        photos: Sequence[Path],
        calibration_dir: Path | None,
        calibration_size: int | None = None,
        float_groups: int | None = None,
    ) -> None:
        self.reference, self.processor, self.image_size = reference, processor, image_size
        self.photos = list(photos)
        self.calibration_dir = calibration_dir
        self.calibration_size = calibration_size or CALIBRATION_SIZE
        self.float_groups = MAX_FLOAT_GROUPS if float_groups is None else float_groups  # 0 is a choice
        self.scratch: Path | None = None
        self._onnx: Path | None = None
        self._calibration: list[np.ndarray] | None = None
        self._calibration_photos: list[Path] = []
        self.quantization: dict[str, Any] | None = None  # what static int8 took, once it ran

    def onnx_fp32(self) -> Path:
        if self._onnx is None:
            assert self.scratch is not None
            self._check_fixed_size()
            self._onnx = self.scratch / "model-fp32.onnx"
            _export_onnx(self.reference.model, self.image_size, self._onnx)
        return self._onnx

    def calibration(self) -> list[np.ndarray]:
        if self._calibration is None:
            self._calibration_photos = calibration_photos(self.calibration_dir, self.photos)
            if not self._calibration_photos:
                raise ModelUnavailable(
                    f"no calibration photos in {self.calibration_dir or 'gradio media_assets'} that are not "
                    "among the guard's photos; static int8 needs real images (--calibration-dir)"
                )
            self._calibration = calibration_inputs(
                self._calibration_photos, self.processor, self.calibration_size
            )
        return self._calibration

    def validation(self) -> tuple[np.ndarray, np.ndarray]:
        """Crops of the calibration photos with another seed (calibration never saw them, the guard never
        sees them), and fp32 PyTorch's logits on them: what static int8's accuracy control measures."""
        self.calibration()  # finds the calibration photos (once), which the crops are cut from
        crops = np.concatenate(
            calibration_inputs(self._calibration_photos, self.processor, VALIDATION_SIZE, VALIDATION_SEED)
        )
        return crops, rows(self.reference, crops)

    @property
    def calibrated(self) -> bool:
        return self._calibration is not None

    def calibration_report(self) -> dict[str, Any]:
        """What static int8 was calibrated on, for optimized.json: never the guard's photos."""
        return {
            "inputs": len(self._calibration or []),
            "photos": [path.name for path in self._calibration_photos],
            "from": str(self.calibration_dir or "the photos bundled with gradio"),
            "held_out_for_the_guard": [path.name for path in self.photos],
        }

    def _check_fixed_size(self) -> None:
        portrait = processed_size(self.processor, PROBE_SIZE[::-1])  # image_size came from a landscape image
        if portrait != self.image_size:  # an exported graph has one input size; PyTorch takes any
            raise ModelUnavailable(
                f"the image processor keeps the aspect ratio ({self.image_size[0]}x{self.image_size[1]} "
                f"and {portrait[0]}x{portrait[1]} inputs), and an exported graph has one input size"
            )


def _run_candidate(
    model_dir: Path,
    out_dir: Path,
    reference: Any,  # the fp32 TorchBackend
    sources: Sources,
    runtime: RuntimeSpec,
    precision: str,
    file: Path | None,
    inputs: np.ndarray,
    measure_seconds: float | None,
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The candidate's logits on the guard's inputs, and its speed if asked. An exported candidate
    (ONNX Runtime, OpenVINO) is written here and run in a child process (:mod:`space.bake.probe`);
    PyTorch bf16 runs in this process."""
    if file is not None:
        _export(sources, runtime, precision, file)
        return probe(out_dir, runtime.name, precision, inputs, measure_seconds)
    candidate: Backend = reference
    if precision == "bf16":
        from space.backends import pytorch

        candidate = pytorch.TorchBf16Backend(pytorch.load_network(model_dir))
    speed = None
    if measure_seconds:
        batch = min(runtime.max_batch, MAX_BATCH)
        workers = runtime.default_workers(available_cpus())
        speed = measure_speed(candidate, sources.image_size, workers, batch, measure_seconds)
    return rows(candidate, inputs), speed


def _export(sources: Sources, runtime: RuntimeSpec, precision: str, file: Path) -> None:
    """Write the runtime's file for ``precision``, from the fp32 ONNX export."""
    if runtime is ONNX_RUNTIME:
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Only the matrix multiplies: that is where the time goes in a ViT, and ConvInteger is slow.
            quantize_dynamic(
                sources.onnx_fp32(),
                file,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
        else:
            shutil.copyfile(sources.onnx_fp32(), file)
        return
    if precision == "int8":
        crops, expected = sources.validation()
        sources.quantization = quantize(
            sources.onnx_fp32(), file, sources.calibration(), crops, expected, sources.float_groups
        )
    else:
        convert(sources.onnx_fp32(), file, precision)


def _file(out_dir: Path, runtime: RuntimeSpec, precision: str) -> Path | None:
    """Where the runtime's file goes in the model folder (None for PyTorch, which loads the folder)."""
    name = runtime.file_for(precision)
    return out_dir / name if name else None


def _remove(file: Path | None) -> None:
    """A candidate's file, and an OpenVINO model's weights beside it."""
    if file is not None:
        file.unlink(missing_ok=True)
        if file.suffix == ".xml":
            file.with_suffix(".bin").unlink(missing_ok=True)


def _write(
    out_dir: Path,
    entry: dict[str, Any],
    refused: list[str],
    measured: list[dict[str, Any]],
    sources: Sources,
) -> Path:
    """``optimized.json``: the choice, its guard report, what static int8 was calibrated on (if it was
    tried), and (when chosen by measurement) every passing candidate's speed and why this one."""
    chosen = {entry["file"], Path(entry["file"]).with_suffix(".bin").name} if entry["file"] else set()
    for stale in [*out_dir.glob("model-*.onnx"), *out_dir.glob("openvino-*.xml")]:
        if stale.name not in chosen:  # an earlier export's file: the folder holds only what is served
            _remove(stale)
    manifest = {**entry, "refused": refused, "cpu": cpu_model()}
    if sources.calibrated:
        manifest["calibration"] = sources.calibration_report()
    if sources.quantization:
        manifest["static_int8"] = sources.quantization
    manifest["cpu_flags"] = sorted(
        cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16"}
    )
    if measured:
        manifest["measured"] = [
            {key: item[key] for key in ("backend", "precision", "speed")}
            | {"min_cosine": item["guard"]["min_cosine"]}
            for item in measured
        ]
        speed = entry["speed"]
        manifest["why"] = (
            f"the fastest of {len(measured)} that passed the accuracy guard on this CPU ({manifest['cpu']}): "
            f"{speed['images_per_s']} images/s under load, {speed['lone_p50_ms']} ms alone"
        )
    path = out_dir / OPTIMIZED_MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _log_speed(entry: dict[str, Any]) -> None:
    speed = entry["speed"]
    log.info(
        "measured",
        extra={"backend": f"{entry['backend']}-{entry['precision']}", **speed},
    )


def _first_line(error: Exception) -> str:
    """The first line of an error, bounded: exporter errors can be pages long."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:300]}"


def reference(model_dir: Path) -> tuple[Any, Any, tuple[int, int]]:
    """fp32 PyTorch (the serving backend every optimised one is compared with), the processor, and the
    input size the processor produces."""
    from transformers import AutoImageProcessor

    from space.backends import pytorch

    processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    return pytorch.TorchBackend(pytorch.load_network(model_dir)), processor, processed_size(processor)


def _export_onnx(model: Any, image_size: tuple[int, int], path: Path) -> None:
    """torch.onnx.export (TorchScript exporter: no extra packages), fp32, any batch size."""
    from space.backends.pytorch import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values=pixel_values).logits

    _whole_map_pools(model, torch)
    example = torch.zeros(1, 3, *image_size)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Logits(model).eval(),  # a new Module trains by default; export restores that mode
            (example,),
            str(path),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    model.eval()


def _whole_map_pools(model: Any, torch: Any) -> None:
    """Average pools whose window is larger than the map they pool (EfficientNet's pooler: a 1280-wide
    window, ceil mode, on a 7x7 map) become the whole-map mean they compute, in place.

    PyTorch and ONNX Runtime clip such a window to the map, but OpenVINO refuses it when converting;
    the mean is the same number, so the model's outputs do not change.
    """

    class WholeMapMean(torch.nn.Module):
        def __init__(self, pool: Any) -> None:
            super().__init__()
            self.pool = pool

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            kernel = self.pool.kernel_size
            height, width = (kernel, kernel) if isinstance(kernel, int) else kernel
            if height >= x.shape[-2] and width >= x.shape[-1]:  # fixed at export: the input size is fixed
                return x.mean(dim=(-2, -1), keepdim=True)
            return self.pool(x)

    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.AvgPool2d) and module.ceil_mode and not module.padding:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], WholeMapMean(module))
