"""The serving pipeline shared by the HTTP API, the UI, MCP and the CLI, top to bottom in one place:

decode (:mod:`space.serving.images`) -> preprocess (the model's processor) -> batch
(:mod:`space.serving.batching`) -> predict (the backend, :mod:`space.backends`) -> scores and labels
(:class:`space.serving.classifier.Classifier`). :class:`Runtime` also holds the settings, the limits and
the model once it is ready; loading resolves the model folder and the backend choice once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from space.backends.choice import Choice, model_file, resolve_choice
from space.errors import ModelUnavailable, NotReady
from space.model.cpu import available_cpus
from space.model.folder import resolve_model
from space.serving import metrics
from space.serving.batching import Batcher
from space.serving.classifier import Classifier, ModelInfo, Prediction, load_resolved
from space.serving.images import ImageLimits, decode, read_file
from space.settings import Settings

log = logging.getLogger(__name__)


class Runtime:
    """Loads the model in the background (so ``/healthz`` answers at once) and classifies once ready."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
        self.load_error: str | None = None
        self._classifier: Classifier | None = None
        self._ready = threading.Event()
        # Decoding and preprocessing run in the server's request threads; bounding them keeps a burst of
        # large photos from starving the inference threads of CPU.
        # Default: half the CPUs (at least one); decoding is short next to inference, even for 12 MP drafts.
        decoders = settings.decode_threads or max(1, available_cpus() // 2)
        self._decoding = threading.BoundedSemaphore(decoders)
        self.batcher: Batcher | None = None
        self.draft_size: tuple[int, int] | None = None
        self.plan: dict[str, int] = {}
        self._resolved: tuple[Path, str | None, Choice] | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            raise NotReady("The model is still loading; retry in a few seconds.")
        return self._classifier

    @property
    def info(self) -> ModelInfo | None:
        return self._classifier.info if self._classifier else None

    def resolve(self) -> tuple[Path, str | None, Choice]:
        """The model folder, its commit and the backend choice, worked out once; a model that is missing
        or a runtime that was not baked raises ``ModelUnavailable`` here (before the port is bound)."""
        if self._resolved is None:
            path, commit = resolve_model(self.settings.model, self.settings.model_revision)
            choice = resolve_choice(path, self.settings.backend, self.settings.precision)
            model_file(path, choice)
            self._resolved = (path, commit, choice)
        return self._resolved

    def load(self) -> None:
        """Load and warm the model; afterwards the runtime is ready. Raises ``ModelUnavailable``."""
        settings = self.settings
        path, commit, choice = self.resolve()
        # CPUs from the cgroup quota and affinity; how many calls at once and how big: see default_workers.
        total = available_cpus()
        threads = settings.threads or total
        workers = settings.workers or default_workers(choice.backend, total)
        model = load_resolved(settings.model, path, commit, choice, threads, workers)
        # Batch only where it helps the backend (its ``max_batch``), unless SPACE_MAX_BATCH_SIZE is set.
        batch = settings.max_batch_size
        if "max_batch_size" not in settings.model_fields_set:
            batch = default_batch(model.backend, batch)
        self.batcher = Batcher(
            metrics.counted(model.backend.logits),  # batch sizes and images, for /metrics
            batch,
            settings.max_batch_wait_ms,
            workers=workers,
        )
        self.draft_size = draft_size(model.processor)
        self.plan = {"workers": workers, "threads": threads, "cpus": total, "max_batch": batch}
        log.info("inference plan", extra={"backend": model.info.backend, **self.plan})
        self._classifier = model
        self._ready.set()

    def load_in_background(self, on_failure: Callable[[str], None]) -> threading.Thread:
        """Start :meth:`load` in a thread; ``on_failure(message)`` runs if the model cannot be loaded."""

        def run() -> None:
            try:
                self.load()
            except ModelUnavailable as error:
                self.load_error = str(error)
            except Exception as error:  # an unexpected bug: still a clear line, then exit
                log.exception("model loading failed")
                self.load_error = f"Model loading failed unexpectedly: {type(error).__name__}: {error}"
            if self.load_error:
                on_failure(self.load_error)

        thread = threading.Thread(target=run, name="model-loader", daemon=True)
        thread.start()
        return thread

    def resolve_top_k(self, top_k: int | None) -> int:
        """The requested ``top_k`` (at least 1, capped at the number of classes) or the configured
        default, capped the same way."""
        if top_k is None:
            return min(self.settings.top_k, self.classifier.num_labels)
        return self.classifier.check_top_k(top_k)

    def classify_bytes(
        self, data: bytes, top_k: int | None = None, function_to_apply: str | None = None
    ) -> list[Prediction]:
        """Decode and classify one uploaded image (the API's path); ``function_to_apply`` None is the
        model's default (sigmoid for multi-label models, softmax otherwise)."""
        return self._classify(lambda: decode(data, self.limits, self.draft_size), top_k, function_to_apply)

    def classify_file(
        self, path: str | Path, top_k: int | None = None, function_to_apply: str | None = None
    ) -> list[Prediction]:
        """Decode and classify one image file (the UI's and CLI's path), with the same checks."""
        return self._classify(lambda: read_file(path, self.limits, self.draft_size), top_k, function_to_apply)

    def _classify(
        self, read: Callable[[], Image.Image], top_k: int | None, function_to_apply: str | None
    ) -> list[Prediction]:
        """Read (bounded decoding threads), preprocess, then through the batcher, so concurrent requests
        share backend calls."""
        model = self.classifier
        k = self.resolve_top_k(top_k)
        assert self.batcher is not None
        with self.batcher.coming(), self._decoding:  # a batch being gathered may wait for this one
            pixels = model.preprocess([read()])[0]
        with metrics.QUEUE_DEPTH.track_inprogress():
            row = self.batcher.submit(pixels)
        return model.top_k(row, k, function_to_apply)


def default_workers(backend: str, cpus: int) -> int:
    """Inference calls at once: ONNX Runtime one per CPU (a lone call still gets every core, see
    OnnxBackend); OpenVINO and PyTorch one call of every core, with concurrent requests batched."""
    return cpus if backend == "onnxruntime" else 1


def default_batch(backend: object, limit: int) -> int:
    """The most images per call: the backend's own ``max_batch`` (where batching was measured to help),
    within ``limit``."""
    return min(limit, getattr(backend, "max_batch", limit))


def draft_size(processor: object) -> tuple[int, int]:
    """How small a JPEG may be decoded: twice the largest edge the processor resizes to, so that its own
    resize (which antialiases) still does the final reduction and top-1 does not change."""
    edges = [224]
    for name in ("size", "crop_size"):
        value = getattr(processor, name, None) or {}
        value = value if isinstance(value, dict) else dict(value)
        edges += [int(v) for v in value.values() if isinstance(v, int | float)]
    edge = 2 * max(edges)
    return edge, edge
