"""Benchmark workload: the model (ViT-B/16, random weights), its cost per image, photo-like JPEGs, and the
hardware's matrix-multiply limit to compare served speed with."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np


def make_vit_b16(folder: Path) -> Path:
    """ViT-B/16 (ViTConfig defaults: 224x224, 16x16 patches, 12 layers of 768) with random weights."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {i: f"class {i}" for i in range(1000)}
    config = ViTConfig(num_labels=1000, id2label=labels, label2id={v: k for k, v in labels.items()})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)
    return folder


def vit_gflop(model_dir: Path) -> float:
    """Forward-pass cost of a ViT per image, in GFLOP (2 per multiply-add): 35.1 for ViT-B/16 at 224."""
    config = json.loads((model_dir / "config.json").read_text())
    size, patch = config.get("image_size", 224), config.get("patch_size", 16)
    dim, mlp = config.get("hidden_size", 768), config.get("intermediate_size", 3072)
    layers = config.get("num_hidden_layers", 12)
    patches = (size // patch) ** 2
    tokens = patches + 1
    embed = patches * dim * 3 * patch * patch
    per_layer = tokens * (4 * dim * dim + 2 * dim * mlp) + 2 * tokens * tokens * dim
    head = dim * config.get("num_labels", len(config.get("id2label", {})) or 2)
    return 2 * (embed + layers * per_layer + head) / 1e9


def make_jpeg(size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth shapes plus grain), so decoding costs what a camera photo costs."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    small = small.filter(ImageFilter.GaussianBlur(2))
    grain = rng.normal(0, 6, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(small, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def measure_peak_gflops(seconds: float = 1.0) -> dict[str, float]:
    """Matrix-multiply throughput of this CPU with PyTorch, fp32 and bf16, all threads, best of a few
    windows: the practical hardware limit (a little under the theoretical peak; lower on a busy machine)."""
    from space.backends.pytorch import torch
    from space.model.cpu import available_cpus

    torch.set_num_threads(available_cpus())
    n, result = 2048, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            torch.mm(a, b)
        best = 0.0
        for _ in range(3):
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / 3:
                torch.mm(a, b)
                count += 1
            best = max(best, 2 * n**3 * count / (time.perf_counter() - started) / 1e9)
        result[name] = round(best, 1)
    return result
