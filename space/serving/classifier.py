"""The classifier: a Hugging Face image-classification checkpoint, loaded once, answering top-k labels.

The work is split so that each part can change alone: the model's own processor turns images into
pixel arrays (transformers' PIL/numpy processors: no torch needed), a *backend* turns a batch of pixel
arrays into logits (:mod:`space.backends`), and :class:`Classifier` turns logits into scores and sorted
labels. The service (:mod:`space.serving.service`) puts decoding, batching and admission around it.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from space.backends import Backend
from space.backends.choice import Choice, load_backend
from space.errors import ModelUnavailable
from space.model.folder import read_bake_manifest
from space.serving import metrics
from space.serving.pixels import ONE_PASS, Pixels, fast_path
from space.serving.threads import INFERENCE
from space.serving.threads import named as named_thread

log = logging.getLogger(__name__)

# The blank image the processor is run on once to learn the input size it really produces.
PROBE_SIZE = (640, 480)


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    index: int  # the class index (the v2 protocol's classification answers name it)


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
    preprocessing: str = "the processor"  # or one pass, where proven equal (space/serving/pixels.py)
    bake: dict[str, Any] | None = None
    optimized: dict[str, Any] | None = None  # the bake step's optimized.json (backend, guard report)
    versions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier:
    """Images in, top-k ``Prediction`` lists out. Safe to call from many threads at once."""

    def __init__(
        self,
        processor: Any,
        backend: Backend,
        id2label: dict[int, str],
        info: ModelInfo,
        one_pass: Pixels | None = None,
    ) -> None:
        self.processor = processor
        self._one_pass = one_pass  # the processor's answer in one pass, where proven equal
        self.backend = backend
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.info = info
        self.function_to_apply = info.function_to_apply

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The model's own processor configuration (resize, crop, normalise), as float32 NCHW."""
        if self._one_pass is not None:
            return np.stack([self._one_pass(image) for image in images])
        batch = self.processor(images=list(images), return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(batch, dtype=np.float32)

    def warm_up(self) -> None:
        """One inference on a blank image, so the first user does not pay for lazy initialisation."""
        height, width = self.info.image_size
        metrics.observe_batch(1)
        self.backend.logits(self.preprocess([Image.new("RGB", (width, height), (127, 127, 127))]))

    def scores(self, logits: np.ndarray, function_to_apply: str | None = None) -> np.ndarray:
        """Rows of logits as scores, as transformers' image-classification pipeline computes them:
        ``function_to_apply``, or the model's default."""
        function = function_to_apply or self.function_to_apply
        return np.stack([scores(row, function) for row in np.atleast_2d(logits)])

    def top_k(self, values: np.ndarray, top_k: int) -> list[Prediction]:
        """The ``top_k`` best of one row of scores (at most every class), ties in label order."""
        order = np.argsort(-values, kind="stable")[: min(top_k, self.num_labels)]
        return [Prediction(self.labels[i], float(values[i]), int(i)) for i in order]


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


def load_resolved(
    model: str, path: Path, commit: str | None, choice: Choice, threads: int, workers: int = 1
) -> Classifier:
    """Processor, config and the chosen backend from a resolved folder, warmed up.

    ``threads`` is the number of intra-op threads per call, and ``workers`` how many calls may run at
    once. Only the chosen runtime is imported (see :mod:`space.backends.choice`).
    """
    started = time.perf_counter()
    import transformers
    from transformers import AutoConfig, AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as error:
        raise ModelUnavailable(
            f"Could not load an image-classification model from {str(path)!r}: {_first_line(error)}. "
            "The folder needs config.json (of an image-classification architecture), "
            "preprocessor_config.json and complete weights (model.safetensors); re-bake or re-download it."
        ) from None
    with named_thread(f"{INFERENCE}-pool"):  # the runtime's own threads, started here, carry the name
        engine = load_backend(path, choice, threads, workers)
    one_pass = fast_path(processor)
    info = ModelInfo(
        model=model,
        revision=commit,
        path=str(path),
        architecture=(config.architectures or [type(config).__name__])[0],
        num_labels=len(config.id2label),
        image_size=processed_size(processor),
        backend=choice.name,
        function_to_apply=default_function(config),
        preprocessing=ONE_PASS if one_pass is not None else "the processor",
        bake=read_bake_manifest(path),
        optimized=choice.optimized,
        versions={
            "python": platform.python_version(),
            choice.runtime.package: choice.runtime.version(),
            "transformers": transformers.__version__,
        },
    )
    labels = {int(k): v for k, v in config.id2label.items()}
    classifier = Classifier(processor, engine, labels, info, one_pass)
    try:
        with named_thread(f"{INFERENCE}-pool"):  # PyTorch starts its pool at the first inference
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


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
