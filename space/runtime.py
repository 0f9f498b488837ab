"""The serving state shared by the HTTP API and the UI: settings, limits, and the model once it is ready."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from space import classifier as classifier_module
from space.classifier import Classifier, ModelInfo, Prediction
from space.errors import ModelUnavailable, NotReady
from space.images import ImageLimits, decode, read_file
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

    def load(self) -> None:
        """Load and warm the model; afterwards the runtime is ready. Raises ``ModelUnavailable``."""
        self._classifier = classifier_module.load(
            self.settings.model, self.settings.model_revision, self.settings.threads
        )
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
        """The requested ``top_k`` (validated against the model) or the configured default, capped."""
        labels = self.classifier.num_labels
        if top_k is None:
            return min(self.settings.top_k, labels)
        return self.classifier.check_top_k(top_k)

    def classify_bytes(self, data: bytes, top_k: int | None = None) -> list[Prediction]:
        """Decode and classify one uploaded image (the API's path)."""
        model = self.classifier
        k = self.resolve_top_k(top_k)
        return model.classify([decode(data, self.limits)], k)[0]

    def classify_file(self, path: str | Path, top_k: int | None = None) -> list[Prediction]:
        """Decode and classify one image file (the UI's and CLI's path), with the same checks."""
        model = self.classifier
        k = self.resolve_top_k(top_k)
        return model.classify([read_file(path, self.limits)], k)[0]
