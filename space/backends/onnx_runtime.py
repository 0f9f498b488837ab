"""ONNX Runtime on the CPU (fp32, or int8 with dynamically quantised matrix multiplies), from the file
the bake step exported. Imports neither torch nor the ``onnx`` package."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class OnnxBackend:
    """ONNX Runtime on the CPU, with two sessions of the same model so that both latency and throughput
    use every core: a call that runs alone gets the ``threads``-wide session; calls that overlap each
    run on their own caller thread in the one-thread session, with no hand-offs between threads
    (measured faster than one shared pool: docs/performance.md). The pools do not spin: a spinning
    pool took CPU from decoding and HTTP and gave a lone request no lower latency.
    """

    def __init__(self, path: Path, precision: str, threads: int = 1, workers: int = 1) -> None:
        self._wide = _session(path, threads)
        # The one-thread session exists only where calls can overlap and the wide one is not it already.
        self._narrow = _session(path, threads=1) if workers > 1 and threads > 1 else self._wide
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


def _session(path: Path, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads that spin would take the cores that decode and serve HTTP.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def create(path: Path, precision: str, threads: int, workers: int) -> OnnxBackend:
    return OnnxBackend(path, precision, threads, workers)
