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
# How logits become scores: transformers' ImageClassificationPipeline ``function_to_apply`` values.
FUNCTIONS = ("sigmoid", "softmax", "none")
# The blank image the processor is run on once to learn the input size it really produces.
PROBE_SIZE = (640, 480)


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
    image_size: tuple[int, int]  # (height, width), as the processor produces it
    backend: str
    function_to_apply: str = "softmax"  # the model's default: sigmoid for multi-label checkpoints
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

    def __init__(
        self,
        processor: Any,
        backend: Backend,
        id2label: dict[int, str],
        info: ModelInfo,
        function_to_apply: str = "softmax",
    ) -> None:
        self.processor = processor
        self.backend = backend
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.info = info
        self.function_to_apply = check_function(function_to_apply)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def check_top_k(self, top_k: int) -> int:
        """``top_k`` capped at the number of classes (as the pipeline does), else a 422 below 1."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise BadParameter(
                f"top_k must be a whole number of at least 1 (this model has {self.num_labels} classes; "
                f"more returns them all); got {top_k!r}."
            )
        return min(top_k, self.num_labels)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The model's own processor configuration (resize, crop, normalise), as float32 NCHW."""
        batch = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(batch, dtype=np.float32)

    def classify(
        self, images: Sequence[Image.Image], top_k: int, function_to_apply: str | None = None
    ) -> list[list[Prediction]]:
        """Top-``top_k`` labels for each image, highest score first (scores: see :meth:`top_k`)."""
        top_k = self.check_top_k(top_k)
        metrics.observe_batch(len(images))
        logits = self.backend.logits(self.preprocess(images))
        return [self.top_k(row, top_k, function_to_apply) for row in logits]

    def warm_up(self) -> None:
        """One inference on a blank image, so the first user does not pay for lazy initialisation."""
        height, width = self.info.image_size
        self.classify([Image.new("RGB", (width, height), (127, 127, 127))], top_k=1)

    def top_k(self, logits: np.ndarray, top_k: int, function_to_apply: str | None = None) -> list[Prediction]:
        """Top-``top_k`` labels of one row of logits (also for the batcher), scored like transformers'
        image-classification pipeline: ``function_to_apply`` or the model's default, ties in label order."""
        values = scores(logits, function_to_apply or self.function_to_apply)
        order = np.argsort(-values, kind="stable")[: min(top_k, self.num_labels)]
        return [Prediction(self.labels[i], float(values[i])) for i in order]


def check_function(value: object) -> str:
    """A ``function_to_apply`` value (any case, as the pipeline accepts), else a 422 naming the three."""
    if isinstance(value, str) and value.strip().lower() in FUNCTIONS:
        return value.strip().lower()
    raise BadParameter(
        f"function_to_apply must be one of {', '.join(FUNCTIONS)} (sigmoid: independent probabilities, "
        f"softmax: probabilities that sum to 1, none: raw logits); got {repr(value)[:80]}. Leave it out "
        "for the model's default."
    )


def default_function(config: Any) -> str:
    """The pipeline's default: none for regression, sigmoid for multi-label or one-label models, else
    softmax (transformers ImageClassificationPipeline.postprocess)."""
    problem_type = getattr(config, "problem_type", None)
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def scores(logits: np.ndarray, function_to_apply: str) -> np.ndarray:
    """One row of logits as scores: sigmoid, softmax or the logits themselves, in float32 as the pipeline
    computes them (so scores that underflow to 0 tie, and keep label order, as they do there)."""
    values = np.asarray(logits, dtype=np.float32)
    if function_to_apply == "sigmoid":
        with np.errstate(over="ignore"):  # exp(-x) is inf for very negative logits: the score is 0
            return 1.0 / (1.0 + np.exp(-values))
    if function_to_apply == "softmax":
        shifted = np.exp(values - values.max())
        return shifted / shifted.sum()
    return values


def processed_size(processor: Any, size: tuple[int, int] = PROBE_SIZE) -> tuple[int, int]:
    """The (height, width) the processor really produces for a blank ``size`` (width, height) image.

    Config fields lie: a ``crop_size`` stays in the file when ``do_center_crop`` is false (BEiT,
    EfficientNet), and ``crop_pct`` or ``shortest_edge`` rules decide the size in code; so run it.
    """
    blank = Image.new("RGB", size, (127, 127, 127))
    height, width = processor(images=blank, return_tensors="np")["pixel_values"].shape[-2:]
    return int(height), int(width)


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
        image_size=processed_size(processor),
        backend=f"{backend}-{precision}",
        function_to_apply=default_function(config),
        bake=_read_bake_manifest(path),
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    )
    info.optimized = optimized
    engine = backends.create_backend(path, network, backend, precision, threads, workers)
    labels = {int(k): v for k, v in config.id2label.items()}
    classifier = Classifier(processor, engine, labels, info, info.function_to_apply)
    try:
        classifier.warm_up()
    except Exception as error:
        raise ModelUnavailable(
            f"The model in {str(path)!r} loads but fails its first inference on a blank "
            f"{info.image_size[1]}x{info.image_size[0]} image ({info.backend}): {_first_line(error)}. "
            "Re-bake it (python -m space bake) or serve it with SPACE_BACKEND=torch."
        ) from None
    info.load_seconds = round(time.perf_counter() - started, 3)
    log.info("model loaded", extra={"model": model, "path": str(path), "seconds": info.load_seconds})
    return classifier


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
