"""The classifier: a Hugging Face image-classification checkpoint, loaded once, answering top-k labels.

The work is split so that each part can change alone: the model's own processor turns images into
pixel arrays, a *backend* turns a batch of pixel arrays into logits (PyTorch here; another runtime can
implement the same one-method protocol), and :class:`Classifier` turns logits into sorted labels.
``classify`` takes a list of images so that requests can be batched in front of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from space import metrics
from space.errors import BadParameter, ModelUnavailable

log = logging.getLogger(__name__)

BAKE_MANIFEST = "vit-space-manifest.json"


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


@dataclass
class ModelInfo:
    """What was loaded, for ``/info``, the UI's title and the logs."""

    model: str
    revision: str | None
    path: str
    architecture: str
    num_labels: int
    image_size: tuple[int, int]
    backend: str
    load_seconds: float = 0.0
    bake: dict[str, Any] | None = None
    optimized: dict[str, Any] | None = None  # the bake step's optimized.json (backend, guard report)
    versions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(Protocol):
    """Turns a batch of preprocessed pixels (N, C, H, W float32) into logits (N, num_labels)."""

    name: str

    def logits(self, pixel_values: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """PyTorch eager inference; one forward pass at a time, each using all inference threads."""

    name = "torch"

    def __init__(self, model: Any) -> None:
        self._model = model.eval()
        self._lock = threading.Lock()

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            output = self._model(pixel_values=torch.from_numpy(pixel_values))
        return output.logits.float().numpy()


class Classifier:
    """Images in, top-k ``Prediction`` lists out. Safe to call from many threads at once."""

    def __init__(self, processor: Any, backend: Backend, id2label: dict[int, str], info: ModelInfo) -> None:
        self.processor = processor
        self.backend = backend
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.info = info

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def check_top_k(self, top_k: int) -> int:
        """``top_k`` if it is valid for this model, else a 422 that says the allowed range."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.num_labels:
            raise BadParameter(
                f"top_k must be a whole number from 1 to {self.num_labels} (this model's number of "
                f"classes); got {top_k!r}."
            )
        return top_k

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The model's own processor configuration (resize, crop, normalise), as float32 NCHW."""
        batch = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(batch, dtype=np.float32)

    def classify(self, images: Sequence[Image.Image], top_k: int) -> list[list[Prediction]]:
        """Top-``top_k`` labels for each image, by softmax probability, highest first."""
        self.check_top_k(top_k)
        metrics.observe_batch(len(images))
        logits = self.backend.logits(self.preprocess(images))
        return [self.top_k(row, top_k) for row in logits]

    def warm_up(self) -> None:
        """One inference on a blank image, so the first user does not pay for lazy initialisation."""
        height, width = self.info.image_size
        self.classify([Image.new("RGB", (width, height), (127, 127, 127))], top_k=1)

    def top_k(self, logits: np.ndarray, top_k: int) -> list[Prediction]:
        """Top-``top_k`` labels of one row of logits, by softmax probability (also for the batcher)."""
        shifted = logits.astype(np.float64) - logits.max()
        probabilities = np.exp(shifted) / np.exp(shifted).sum()
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        return [Prediction(self.labels[i], float(probabilities[i])) for i in order]


def resolve_model(model: str, revision: str | None) -> tuple[Path, str | None]:
    """The local folder holding ``model`` and its commit, without any network access.

    ``model`` is either a folder, or a Hub id looked up in the local Hugging Face cache only.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder.resolve(), revision
    if folder.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailable(
            f"SPACE_MODEL={model!r} is not a folder. Point SPACE_MODEL at a folder that holds the model's "
            "config.json, preprocessor_config.json and weights, or at a Hub model id."
        )
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception as error:
        at = f" at revision {revision!r}" if revision else ""
        raise ModelUnavailable(
            f"The model {model!r}{at} is not available offline ({type(error).__name__}), and this app "
            "never downloads at run time. Fix: bake it first with `python -m space bake --model "
            f"{model}{' --revision ' + revision if revision else ''} --output models/baked` and set "
            "SPACE_MODEL=models/baked, or point SPACE_MODEL at a local model folder, or download it into "
            "the Hugging Face cache (`hf download`) before starting."
        ) from None
    return path, path.name


def load(
    model: str,
    revision: str | None = None,
    threads: int | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    workers: int = 1,
) -> Classifier:
    """Load processor and model from a folder or the local Hub cache, warmed and ready to classify.

    ``backend``/``precision`` pick the inference backend (see :mod:`space.backends`; ``auto`` serves what
    the bake step chose, else fp32 PyTorch); ``threads`` is the number of intra-op threads per call, and
    ``workers`` how many calls may run at once.
    """
    started = time.perf_counter()
    path, commit = resolve_model(model, revision)
    import torch
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    from space import backends

    backend, precision, optimized = backends.resolve_choice(path, backend, precision)
    threads = threads or backends.available_cpus()
    torch.set_num_threads(threads)
    # One graph at a time: inter-op threads would only compete with intra-op ones. Raises if already set.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    try:
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        if backend == "torch":
            network = AutoModelForImageClassification.from_pretrained(path, local_files_only=True)
            config = network.config
        else:  # the ONNX file holds the weights; the PyTorch model is not kept in memory
            network = None
            config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as error:
        raise ModelUnavailable(
            f"Could not load an image-classification model from {str(path)!r}: {_first_line(error)}. "
            "The folder needs config.json (of an image-classification architecture), "
            "preprocessor_config.json and complete weights (model.safetensors); re-bake or re-download it."
        ) from None
    info = ModelInfo(
        model=model,
        revision=commit,
        path=str(path),
        architecture=(config.architectures or [type(network).__name__])[0],
        num_labels=len(config.id2label),
        image_size=_image_size(processor),
        backend=f"{backend}-{precision}",
        bake=_read_bake_manifest(path),
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    )
    info.optimized = optimized
    engine = backends.create_backend(path, network, backend, precision, threads, workers)
    classifier = Classifier(processor, engine, {int(k): v for k, v in config.id2label.items()}, info)
    classifier.warm_up()
    info.load_seconds = round(time.perf_counter() - started, 3)
    log.info("model loaded", extra={"model": model, "path": str(path), "seconds": info.load_seconds})
    return classifier


def _image_size(processor: Any) -> tuple[int, int]:
    """The (height, width) the processor produces, for the warm-up image."""
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    size = dict(size) if not isinstance(size, dict) else size
    if "height" in size:
        return int(size["height"]), int(size["width"])
    edge = int(size.get("shortest_edge", 224))
    return edge, edge


def _read_bake_manifest(path: Path) -> dict[str, Any] | None:
    manifest = path / BAKE_MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text())
    except (OSError, ValueError):
        log.warning("unreadable bake manifest", extra={"path": str(manifest)})
        return None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
