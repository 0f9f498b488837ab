"""Bake step, probe: an exported candidate (OpenVINO, ONNX Runtime) run in a child process on the guard's
inputs, and timed there when the bake chooses by speed.

Why a child process: a runtime that crashes on a model must refuse that candidate, not crash the bake
(measured: OpenVINO 2026.4 segfaults running NNCF's static int8 of a small MobileNetV2). A fresh process
per candidate also times each runtime alone, with no other runtime's threads left behind. The child
loads the candidate through the serving code and imports no torch.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from space.settings import Settings

# The serving default (SPACE_MAX_BATCH_SIZE), within which a runtime's own max_batch applies.
MAX_BATCH: int = Settings.model_fields["max_batch_size"].default


class ProbeFailed(RuntimeError):
    """The candidate's process failed or crashed while loading or running the model."""


def probe(
    model_dir: Path, backend: str, precision: str, inputs: np.ndarray, measure_seconds: float | None = None
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """The candidate's logits on ``inputs`` (one at a time), and its speed if ``measure_seconds``."""
    with tempfile.TemporaryDirectory(prefix="vit-space-probe-") as scratch:
        folder = Path(scratch)
        np.save(folder / "inputs.npy", inputs)
        command = [sys.executable, "-m", "space.bake.probe", str(model_dir), backend, precision, scratch]
        command += [str(measure_seconds)] if measure_seconds else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            if done.returncode < 0:
                why = f"the runtime crashed running the model ({signal.Signals(-done.returncode).name})"
            else:
                lines = done.stderr.strip().splitlines()
                why = lines[-1][:300] if lines else f"exit status {done.returncode}"
            raise ProbeFailed(why)
        logits = np.load(folder / "logits.npy")
        speed = folder / "speed.json"
        return logits, json.loads(speed.read_text()) if speed.is_file() else None


def main(argv: Sequence[str]) -> int:
    """The child: load the candidate as the server would, run it, write logits.npy (and speed.json)."""
    from space.backends.choice import choose, load_backend
    from space.bake.guard import rows
    from space.bake.speed import measure_speed
    from space.model.cpu import available_cpus

    model_dir, backend, precision, scratch, *seconds = argv
    folder = Path(scratch)
    cpus = available_cpus()
    choice = choose(backend, precision)
    workers = choice.runtime.default_workers(cpus)
    engine = load_backend(Path(model_dir), choice, cpus, workers)
    inputs = np.load(folder / "inputs.npy")
    np.save(folder / "logits.npy", rows(engine, inputs))
    if seconds:
        batch = min(choice.runtime.max_batch, MAX_BATCH)
        speed = measure_speed(engine, inputs.shape[-2:], workers, batch, float(seconds[0]))
        (folder / "speed.json").write_text(json.dumps(speed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
