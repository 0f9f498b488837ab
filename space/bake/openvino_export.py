"""Bake step, OpenVINO: the ONNX export converted to OpenVINO's format, then compressed or quantised by
NNCF as the precision asks (:mod:`space.backends.openvino_runtime` serves the result).

- ``fp32`` and ``bf16``: the converted model as it is (bf16 is a precision *hint* at load time);
- ``int8-weights``: ``nncf.compress_weights`` (int8 asymmetric, per channel; no data needed);
- ``int8``: static (weights and activations), with accuracy control, in a child process (:func:`quantize`).

Static int8: NNCF quantises (activations calibrated on :mod:`space.bake.calibration`'s crops), then
measures the result on other crops of the same photos, never the guard's, against fp32 PyTorch's
logits. While their minimum cosine has dropped by more than :data:`MAX_DROP`, NNCF puts back in float
the operations that move the logits most (``nncf.quantize_with_accuracy_control``), at most
:data:`MAX_FLOAT_GROUPS` groups of them. The accuracy guard then judges the result as it judges every
candidate.

Why a child process: NNCF and OpenVINO have crashed the process they ran in (measured: a segfault on a
small MobileNetV2), and a crash must refuse this candidate, not end the bake. The child's log lines are
passed on as they come (the bake's progress), and it is stopped after :data:`TIME_LIMIT_S`.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from space.bake.guard import cosines

VALIDATION_SIZE = 32  # held-out crops: ViT-B/16 int8 validates them in about 2 s on 2 cores
VALIDATION_SEED = 20261207  # not the calibration seed: crops calibration never saw
MAX_DROP = 0.005  # of the validation crops' minimum cosine: 0.995 from 1.0, inside the guard's 0.99
RANKING_SUBSET = 8  # crops each candidate group is ranked on (the ones int8 moved most)
MAX_FLOAT_GROUPS = 12  # operation groups put back in float at most: int8 that needs more is not int8
# Keeps a ViT-B/16 `make run` bake under 10 minutes on 2 cores: its static int8 took 87-95 s and the
# whole bake about 6 minutes (AMD EPYC Zen 4); accuracy control that needs more is stopped and refused.
TIME_LIMIT_S = 300.0


def convert(onnx_file: Path, path: Path, precision: str) -> None:
    """Write ``path`` (``.xml`` and its ``.bin``) from the fp32 ``onnx_file``: fp32, bf16 or int8-weights."""
    import openvino as ov

    model = ov.convert_model(str(onnx_file))
    if precision == "int8-weights":
        import nncf

        model = nncf.compress_weights(model)
    ov.save_model(model, str(path), compress_to_fp16=False)


class QuantizationFailed(RuntimeError):
    """The child process crashed, failed, or ran past the time limit."""


def quantize(
    onnx_file: Path,
    path: Path,
    calibration: Sequence[np.ndarray],
    validation: np.ndarray,
    expected: np.ndarray,
    float_groups: int = MAX_FLOAT_GROUPS,
    time_limit: float = TIME_LIMIT_S,
) -> dict[str, Any]:
    """Write ``path`` (``.xml`` and ``.bin``), static int8 of the fp32 ``onnx_file``; ``validation`` are
    preprocessed crops and ``expected`` fp32 PyTorch's logits on them; at most ``float_groups`` groups
    of operations go back to float (0: none, and no accuracy control, only its measurement). Returns
    what was done, for ``optimized.json``."""
    if not len(calibration):
        raise ValueError("static int8 needs calibration images")
    with tempfile.TemporaryDirectory(prefix="vit-space-quantize-") as scratch:
        folder = Path(scratch)
        np.save(folder / "calibration.npy", np.stack(calibration))
        np.save(folder / "validation.npy", validation)
        np.save(folder / "expected.npy", expected)
        command = [sys.executable, "-m", "space.bake.openvino_export", str(onnx_file), str(path), scratch]
        command.append(str(float_groups))
        started = time.perf_counter()
        _run(command, time_limit)
        report = json.loads((folder / "report.json").read_text())
    return {**report, "seconds": round(time.perf_counter() - started, 1)}


def _run(command: list[str], time_limit: float) -> None:
    """Run the child, passing its output lines on as progress; raise with its last line if it fails."""
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    expired = threading.Event()
    timer = threading.Timer(time_limit, lambda: (expired.set(), child.kill()))
    timer.start()
    last = ""
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip():
                print(f"static int8: {line.rstrip()}", file=sys.stderr, flush=True)
                last = line.strip()
        code = child.wait()
    finally:
        timer.cancel()
    if code == 0:
        return
    if expired.is_set():
        raise QuantizationFailed(
            f"it took longer than {time_limit:g} s (stopped); --float-groups 0 quantises everything "
            "without accuracy control, faster, and leaves the accuracy guard to judge"
        )
    if code < 0:
        raise QuantizationFailed(f"the quantiser crashed ({signal.Signals(-code).name})")
    raise QuantizationFailed(last[:300] or f"exit status {code}")


def min_cosine(compiled: Any, items: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[float]]:
    """NNCF's validation function: the minimum cosine of the model's logits with fp32 PyTorch's over
    ``items`` (input, expected logits), and each item's cosine (which ranks the items)."""
    got = np.stack([np.asarray(compiled(pixels)[0][0], dtype=np.float64) for pixels, _ in items])
    each = cosines(np.stack([expected for _, expected in items]), got).tolist()
    return min(each), each


def int8_ops(model: Any) -> tuple[int, int]:
    """How many matrix multiplies and convolutions take a quantised activation, of how many."""
    heavy = [
        op for op in model.get_ops() if op.get_type_name() in ("MatMul", "Convolution", "GroupConvolution")
    ]
    quantised = [
        op
        for op in heavy
        if any(
            value.get_node().get_type_name() == "FakeQuantize"
            for value in (op.input_value(index) for index in range(op.get_input_size()))
        )
    ]
    return len(quantised), len(heavy)


def is_transformer(model: Any) -> bool:
    """Attention marks a transformer: NNCF then keeps the ops int8 would hurt in float. The converter
    fuses a ViT's attention into one ScaledDotProductAttention op, so its Softmax is no longer there
    (measured: typed as no transformer, ViT-B/16's static int8 fell to min cosine 0.976 on the guard)."""
    attention = {"Softmax", "ScaledDotProductAttention"}
    return any(op.get_type_name() in attention for op in model.get_ops())


def _quantize(onnx_file: Path, path: Path, folder: Path, float_groups: int) -> dict[str, Any]:
    """The child's work: convert, quantise (with accuracy control if ``float_groups``), save; returns its
    report."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    model = ov.convert_model(str(onnx_file))
    calibration = list(np.load(folder / "calibration.npy"))
    validation = np.load(folder / "validation.npy")
    expected = np.load(folder / "expected.npy").astype(np.float64)
    items = [(validation[i : i + 1], expected[i]) for i in range(len(validation))]
    transformer = is_transformer(model)
    print(f"calibrating on {len(calibration)} crops, validating on {len(items)} others", flush=True)
    common: dict[str, Any] = dict(
        preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations: GELU and ReLU outputs are skewed
        model_type=nncf.ModelType.TRANSFORMER if transformer else None,
        subset_size=len(calibration),
    )
    advanced = AdvancedQuantizationParameters(
        # Saturation-safe on CPUs without VNNI, so that they compute what was validated here.
        overflow_fix=OverflowFix.ENABLE,
        # SmoothQuant off: on ViT-B/16 it lowered the held-out photos' min cosine (0.96 against 0.996).
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1),
    )
    if float_groups:
        quantized = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(calibration),
            nncf.Dataset(items),
            min_cosine,
            max_drop=MAX_DROP,
            advanced_quantization_parameters=advanced,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=float_groups, ranking_subset_size=RANKING_SUBSET, num_ranking_workers=1
            ),
            **common,
        )
    else:
        quantized = nncf.quantize(model, nncf.Dataset(calibration), advanced_parameters=advanced, **common)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    achieved, _ = min_cosine(ov.Core().compile_model(quantized, "CPU"), items)
    quantised, heavy = int8_ops(quantized)
    return {
        "method": "nncf.quantize_with_accuracy_control" if float_groups else "nncf.quantize",
        "float_groups_allowed": float_groups,
        "transformer": transformer,
        "calibration_inputs": len(calibration),
        "validation_inputs": len(items),
        "validation_min_cosine": round(achieved, 6),
        "max_drop": MAX_DROP,
        # Matrix multiplies and convolutions: those taking int8 activations, and all of them.
        "int8_ops": quantised,
        "heavy_ops": heavy,
    }


def main(argv: Sequence[str]) -> int:
    onnx_file, path, scratch, float_groups = argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = _quantize(Path(onnx_file), Path(path), Path(scratch), int(float_groups))
    (Path(scratch) / "report.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
