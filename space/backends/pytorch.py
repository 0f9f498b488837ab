"""PyTorch eager inference, fp32 or bf16: the one module of ``space`` that imports torch.

Served only when chosen (``SPACE_BACKEND=torch``, or a bake without an optimised export); the bake step
also reaches torch through here (the fp32 reference of its accuracy guard, and the ONNX export).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from space.errors import ModelUnavailable


class TorchBackend:
    """PyTorch eager fp32; one forward pass at a time, each using all inference threads."""

    name = "torch"

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self._lock = threading.Lock()

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        with self._lock, torch.inference_mode():
            output = self.model(pixel_values=torch.from_numpy(pixel_values))
        return output.logits.float().numpy()


class TorchBf16Backend:
    """PyTorch with bfloat16 weights and activations: several times fp32 on CPUs with AVX512-BF16 or AMX,
    and faster per image in batches."""

    name = "torch-bf16"

    def __init__(self, model: Any) -> None:
        self.model = model.eval().to(torch.bfloat16)
        self._lock = threading.Lock()

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        with self._lock, torch.inference_mode():
            output = self.model(pixel_values=torch.from_numpy(pixel_values).to(torch.bfloat16))
        return output.logits.float().numpy()


def load_network(model_dir: Path) -> Any:
    """The transformers model in ``model_dir`` (offline), in eval mode; a clear error if it cannot load."""
    from transformers import AutoModelForImageClassification

    try:
        return AutoModelForImageClassification.from_pretrained(model_dir, local_files_only=True).eval()
    except Exception as error:
        lines = str(error).strip().splitlines()
        raise ModelUnavailable(
            f"Could not load an image-classification model from {str(model_dir)!r}: "
            f"{(lines[0] if lines else type(error).__name__)[:300]}. The folder needs config.json (of an "
            "image-classification architecture), preprocessor_config.json and complete weights "
            "(model.safetensors); re-bake or re-download it."
        ) from None


def set_threads(threads: int) -> None:
    """Intra-op threads per call; one inter-op thread (one graph at a time: more would only compete)."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # raises if already set in this process
        torch.set_num_interop_threads(1)


def create(
    model_dir: Path, precision: str, threads: int, workers: int = 1
) -> TorchBackend | TorchBf16Backend:
    """The serving backend for ``precision`` (fp32 or bf16) from the folder's PyTorch weights."""
    set_threads(threads)
    network = load_network(model_dir)
    return TorchBf16Backend(network) if precision == "bf16" else TorchBackend(network)
