"""OpenVINO on the CPU, from the model the bake step converted (``openvino-<precision>.xml`` and its
``.bin``). Imports neither torch nor NNCF: quantisation happened at bake time.

Precisions (what the bake step wrote, :mod:`space.bake.openvino_export`):

- ``fp32``: the converted model, run in f32 (the precision hint pinned to f32: exact on any CPU);
- ``bf16``: the same model under OpenVINO's default precision hint, bf16 where the CPU has AVX512-BF16
  or AMX (f32 elsewhere, so never less exact than the CPU allows);
- ``int8-weights``: NNCF int8 weight compression (weights stored int8, computed in the default hint);
- ``int8``: NNCF static int8, activations calibrated on real images at bake time.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints

from space.memory import release_mapped_file


class OpenVinoBackend:
    """One compiled model, one stream of ``threads`` cores: a lone request gets every core at once, and
    concurrent requests share a batch (the batcher gathers them while a batch runs): batches of 8 on one
    stream were measured faster than one-core streams (docs/performance.md).
    """

    def __init__(self, path: Path, precision: str, threads: int) -> None:
        config: dict[str, object] = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            props.inference_num_threads: threads,
            props.num_streams: 1,
        }
        if precision == "fp32":
            config[hints.inference_precision] = ov.Type.f32
        self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time (the batcher has one worker)
        # What the CPU really computes in (bf16 asks for bf16; a CPU without it runs f32).
        self.inference_precision = self._compiled.get_property(hints.inference_precision).get_type_name()
        # The first inference (the server's warm-up) repacks the weights into OpenVINO's own memory; the
        # mapped weights file is never read again, so its pages are let go then.
        self._weights: Path | None = path.with_suffix(".bin")
        self.name = f"openvino-{precision}"
        self.path = path

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        with self._lock:
            # share_outputs=False (the default): the result is a copy the next call does not overwrite.
            logits = self._request.infer({0: pixel_values})[0]
            if self._weights is not None:
                release_mapped_file(self._weights)
                self._weights = None
            return logits


def create(path: Path, precision: str, threads: int, workers: int) -> OpenVinoBackend:
    return OpenVinoBackend(path, precision, threads)
