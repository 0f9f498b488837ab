"""Bake step, export: makes the optimised serving backend (ONNX Runtime fp32/int8, or PyTorch bf16) once,
checks it with the accuracy guard, and records the choice in ``optimized.json`` beside the model.

Why at bake time: exporting and quantising take tens of seconds, memory, torch and the ``onnx`` package;
the server only loads what was baked here (it never converts a model). torch is reached through the
PyTorch backend (:mod:`space.backends.pytorch`), the one module that imports it.
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

from space.backends import Backend
from space.backends.choice import check_choice
from space.bake.guard import MIN_COSINE, MIN_TOP1_AGREEMENT, AccuracyError, check_accuracy
from space.errors import ModelUnavailable
from space.model.cpu import available_cpus, candidates, cpu_flags
from space.model.folder import OPTIMIZED_MANIFEST
from space.serving.classifier import PROBE_SIZE, processed_size

log = logging.getLogger(__name__)


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
    ref, processor, image_size = reference(model_dir)
    architecture = type(ref.model).__name__
    refused: list[str] = []
    unservable: list[str] = []  # choices that could not even be built or run, not merely inaccurate
    for choice_backend, choice_precision in choices:
        started = time.perf_counter()
        file = out_dir / f"model-{choice_precision}.onnx" if choice_backend == "onnxruntime" else None
        try:
            candidate = _candidate(
                model_dir, ref, processor, image_size, choice_backend, choice_precision, file
            )
            report = check_accuracy(ref, candidate, processor, image_size, photos, min_cosine, min_top1)
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
    reference: Any,  # the fp32 TorchBackend
    processor: Any,
    image_size: tuple[int, int],
    backend: str,
    precision: str,
    file: Path | None,
) -> Backend:
    """The backend to check against the reference: exported (ONNX) or converted (bf16) as needed."""
    if backend == "onnxruntime":
        portrait = processed_size(processor, PROBE_SIZE[::-1])  # image_size came from a landscape image
        if portrait != image_size:  # an exported graph has one input size; PyTorch takes any
            raise ModelUnavailable(
                f"the image processor keeps the aspect ratio ({image_size[0]}x{image_size[1]} and "
                f"{portrait[0]}x{portrait[1]} inputs), and an ONNX export has one input size"
            )
        assert file is not None
        _export_onnx(reference.model, image_size, file, precision)
        from space.backends.onnx_runtime import OnnxBackend

        return OnnxBackend(file, precision, threads=available_cpus())
    if precision == "bf16":
        from space.backends import pytorch

        return pytorch.TorchBf16Backend(pytorch.load_network(model_dir))
    return reference


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


def _export_onnx(model: Any, image_size: tuple[int, int], path: Path, precision: str) -> None:
    """torch.onnx.export (TorchScript exporter: no extra packages), then dynamic int8 if asked."""
    from space.backends.pytorch import torch

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
