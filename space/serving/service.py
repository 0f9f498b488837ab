"""The classification service: the one API every front door calls (the HF contract, the v2 protocol, the
page, MCP, the CLI), top to bottom in one place:

admit (:mod:`space.serving.admission`: one slot per image) -> decode (:mod:`space.serving.images`) ->
preprocess (the model's processor) -> batch (:mod:`space.serving.batching`, shared by every request) ->
predict (the backend, :mod:`space.backends`) -> scores and labels
(:class:`space.serving.classifier.Classifier`).

:meth:`ClassificationService.classify` and :meth:`~ClassificationService.explain` take images and one
:class:`~space.serving.params.Params`; front doors that read a request body take a slot first
(:meth:`~ClassificationService.reserve`), so that a full server never reads the upload.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

import numpy as np
from PIL import Image

from space.errors import BadParameter, ModelUnavailable, NotReady, TooLarge, UserError
from space.model.cpu import available_cpus
from space.serving import metrics
from space.serving.admission import DEFAULT_WORKERS, Admission, DeadlineExceeded, Overloaded, Slot
from space.serving.classifier import Classifier, ModelInfo, Prediction
from space.serving.explain import Explanation
from space.serving.explainer import Explainer, count_outcome
from space.serving.images import ImageLimits, ImageSource, load_image
from space.serving.loading import Loaded, Plan, Resolved, load, resolve
from space.serving.params import Params
from space.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClassificationService:
    """Loads the model in the background (so health probes answer at once) and classifies once ready."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
        # Enough admission threads to fill a batch and decode the next one while it runs (they mostly
        # wait on the batcher, not the GIL): with one batch's worth, the model idled between batches.
        self.admission = Admission(
            settings.max_in_flight,
            settings.request_timeout_s,
            workers=max(DEFAULT_WORKERS, 2 * settings.max_batch_size),
            queue_timeout_s=settings.queue_timeout_s,
        )
        self.explainer = Explainer(settings.explain_grid, settings.explain_concurrency, self.admission.limit)
        self.load_error: str | None = None
        # Decoding runs in the admission threads; bounding it keeps a burst of large photos from starving
        # inference of CPU. Default: half the CPUs (decoding is short next to inference).
        self._decoding = threading.BoundedSemaphore(settings.decode_threads or max(1, available_cpus() // 2))
        self._loaded: Loaded | None = None
        self._ready = threading.Event()
        self._resolved: Resolved | None = None

    # --- Lifecycle ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def loaded(self) -> Loaded:
        if self._loaded is None:
            raise NotReady("The model is still loading; retry in a few seconds.")
        return self._loaded

    @property
    def model(self) -> Classifier:
        return self.loaded.model

    @property
    def plan(self) -> Plan:
        return self.loaded.plan

    @property
    def info(self) -> ModelInfo | None:
        return self._loaded.model.info if self._loaded else None

    @property
    def name(self) -> str:
        """The model's name in the v2 protocol: SPACE_MODEL_NAME, else the last part of its id or folder."""
        return self.settings.model_name or self.resolve().name

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    def resolve(self) -> Resolved:
        """The model folder and runtime, worked out once: a missing model or an unbaked runtime raises
        ``ModelUnavailable`` here (before the port is bound)."""
        if self._resolved is None:
            self._resolved = resolve(self.settings)
        return self._resolved

    def load(self) -> None:
        """Load and warm the model; afterwards the service is ready. Raises ``ModelUnavailable``."""
        self._loaded = load(self.settings, self.resolve())
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

    def close(self) -> None:
        self.admission.shutdown()
        if self._loaded is not None:
            self._loaded.batcher.close()

    # --- The API ------------------------------------------------------------------------------------

    def reserve(self, weight: int = 1) -> AbstractContextManager[Slot]:
        """Slots taken before a request body is read: when full, 503 at once and the body stays unread.
        A classification grows its slot to its number of images; an explanation takes its weight."""
        self.loaded  # noqa: B018 - while loading: 503 before the body is read, too
        return self.admission.slot(weight)

    @property
    def explain_weight(self) -> int:
        return self.explainer.weight

    async def classify(
        self, images: Sequence[ImageSource], params: Params, slot: Slot | None = None
    ) -> list[list[Prediction]]:
        """The top classes of each image, best first: ``params.top_k`` of them (default SPACE_TOP_K)."""
        values = await self.score(images, params, slot)
        model = self.model
        k = params.top_k or self.settings.top_k
        return [model.top_k(row, k) for row in values]

    async def classify_each(
        self, images: Sequence[ImageSource], params: Params
    ) -> list[list[Prediction] | UserError]:
        """Like :meth:`classify`, for many files of one user (the page's bulk tab, the CLI): a bad image
        gets its error in its place, and the others are still classified."""
        results: dict[int, list[Prediction] | UserError] = {}
        pending = list(range(len(images)))
        while pending:
            try:
                rankings = await self.classify([images[i] for i in pending], params)
            except UserError as error:
                if error.index is None and len(pending) > 1:
                    raise
                results[pending.pop(error.index or 0)] = error
                continue
            results.update(zip(pending, rankings, strict=True))
            pending = []
        return [results[i] for i in range(len(images))]

    async def score(
        self, images: Sequence[ImageSource], params: Params, slot: Slot | None = None
    ) -> np.ndarray:
        """Every class's score for each image (N, labels), after ``params.function_to_apply`` or the
        model's default."""
        self.check_count(len(images))
        return await self._admitted(len(images), slot, self._scores, images, params.function_to_apply)

    async def explain(
        self, image: ImageSource, params: Params, slot: Slot | None = None
    ) -> tuple[Explanation, Image.Image]:
        """Where the model looked for ``params.target`` (default: the top class), and the decoded image."""
        deadline = time.monotonic() + self.admission.timeout_s
        try:
            result = await self._admitted(
                self.explain_weight, slot, self._explain, image, params.target, deadline
            )
        except (UserError, Overloaded, DeadlineExceeded) as error:
            count_outcome(error)
            raise
        count_outcome(None)
        return result

    # --- Inside: what runs in an admission thread ----------------------------------------------------

    def check_count(self, count: int) -> None:
        """A request's number of images, before they are read where the front door knows it early."""
        self.loaded  # noqa: B018 - NotReady before anything else
        limit = self.settings.max_images_per_request
        if count < 1:
            raise BadParameter("The request holds no image. Send at least one.")
        if count > limit:
            raise TooLarge(
                f"The request holds {count} images; the limit is {limit} per request "
                f"(SPACE_MAX_IMAGES_PER_REQUEST). Send them in requests of at most {limit}."
            )

    async def _admitted(self, weight: int, slot: Slot | None, fn: Callable[..., T], *args: object) -> T:
        if slot is None:
            with self.admission.slot(weight) as own:
                return await own.run(fn, *args)
        slot.grow(weight)
        return await slot.run(fn, *args)

    def _pixels(self, source: ImageSource, index: int, count: int) -> np.ndarray:
        loaded = self.loaded
        with self._decoding:
            try:
                image = load_image(source, self.limits, loaded.draft_size)
            except UserError as error:
                raise error.at(index) if count > 1 else error from None
            return loaded.model.preprocess([image])[0]

    def _scores(self, images: Sequence[ImageSource], function: str | None) -> np.ndarray:
        loaded = self.loaded
        with loaded.batcher.coming():  # a batch being gathered may wait for these
            pixels = [self._pixels(image, i, len(images)) for i, image in enumerate(images)]
        with metrics.waiting(len(pixels)):
            logits = loaded.batcher.submit_many(pixels)
        return loaded.model.scores(logits, function)

    def _explain(
        self, source: ImageSource, target: object, deadline: float
    ) -> tuple[Explanation, Image.Image]:
        loaded = self.loaded
        image = load_image(source, self.limits, loaded.draft_size)
        # One batch per inference worker at a time: the batcher stays busy, never far ahead of a prediction.
        chunk = loaded.plan.max_batch * loaded.plan.workers
        edge = max(loaded.draft_size)
        run = loaded.batcher.submit_many
        return self.explainer.explain(loaded.model, image, target, run, chunk, edge, deadline), image
