"""Bake step, OpenVINO: the ONNX export converted to OpenVINO's format, then compressed or quantised by
NNCF as the precision asks (:mod:`space.backends.openvino_runtime` serves the result).

- ``fp32`` and ``bf16``: the converted model as it is (bf16 is a precision *hint* at load time);
- ``int8-weights``: ``nncf.compress_weights`` (int8 asymmetric, per channel; no data needed);
- ``int8``: ``nncf.quantize`` (static: weights and activations) calibrated on real photos
  (:mod:`space.bake.calibration`), with the overflow fix on every layer, so that CPUs without VNNI
  (whose int8 multiply-adds can saturate) give the results the guard measured here; SmoothQuant off
  (measured: it lowered accuracy on ViT-B/16).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def convert(onnx_file: Path, path: Path, precision: str, calibration: Sequence[np.ndarray] = ()) -> None:
    """Write ``path`` (``.xml`` and its ``.bin``) from the fp32 ``onnx_file`` for ``precision``."""
    import openvino as ov

    model = ov.convert_model(str(onnx_file))
    if precision == "int8-weights":
        import nncf

        model = nncf.compress_weights(model)
    elif precision == "int8":
        model = _quantize(model, calibration)
    ov.save_model(model, str(path), compress_to_fp16=False)


def _quantize(model: object, calibration: Sequence[np.ndarray]) -> object:
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        OverflowFix,
    )

    if not calibration:
        raise ValueError("static int8 needs calibration images")
    # Attention (Softmax) marks a transformer: NNCF then keeps the ops int8 would hurt in float.
    attention = any(op.get_type_name() == "Softmax" for op in model.get_ops())  # type: ignore[attr-defined]
    log.info("calibrating static int8", extra={"inputs": len(calibration), "transformer": attention})
    return nncf.quantize(
        model,
        nncf.Dataset(list(calibration)),
        preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations: GELU and ReLU outputs are skewed
        model_type=nncf.ModelType.TRANSFORMER if attention else None,
        subset_size=len(calibration),
        advanced_parameters=AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.ENABLE,
            # SmoothQuant off: on ViT-B/16 it lowered the held-out photos' min cosine (0.96 against 0.996).
            smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1, convolution=-1),
        ),
    )
