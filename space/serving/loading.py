"""Loading the model for serving: which folder and runtime (resolved once, before the port is bound), and
the inference plan for this machine's CPUs (calls at once, threads per call, images per call)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from space.backends.choice import Choice, model_file, resolve_choice
from space.model.cpu import available_cpus
from space.model.folder import read_bake_manifest, resolve_model
from space.serving import metrics
from space.serving.batching import Batcher
from space.serving.classifier import Classifier, load_resolved
from space.serving.images import draft_size
from space.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolved:
    """The model's folder, its commit (for a Hub snapshot), the runtime that serves it, and its name."""

    path: Path
    commit: str | None
    choice: Choice
    name: str  # the last part of the model id (the bake's, for a baked folder) or of the folder


@dataclass(frozen=True)
class Plan:
    """How inference runs on this machine: calls at once, threads per call, CPUs, most images per call."""

    workers: int
    threads: int
    cpus: int
    max_batch: int


@dataclass(frozen=True)
class Loaded:
    """What exists once the model is ready: the model, the batcher every request shares, the plan, and how
    small a JPEG may be decoded."""

    model: Classifier
    batcher: Batcher
    plan: Plan
    draft_size: tuple[int, int]


def resolve(settings: Settings) -> Resolved:
    """Never downloads: a folder, or a Hub id already in the local cache; the runtime baked for it."""
    path, commit = resolve_model(settings.model, settings.model_revision)
    choice = resolve_choice(path, settings.backend, settings.precision)
    model_file(path, choice)
    baked_from = (read_bake_manifest(path) or {}).get("model_id") or settings.model
    return Resolved(path, commit, choice, Path(str(baked_from).rstrip("/")).name)


def load(settings: Settings, resolved: Resolved) -> Loaded:
    """The model loaded and warmed, and its batcher running."""
    cpus = available_cpus()  # the cgroup quota and affinity
    runtime = resolved.choice.runtime
    threads = settings.threads or cpus
    workers = settings.workers or runtime.default_workers(cpus)
    model = load_resolved(settings.model, resolved.path, resolved.commit, resolved.choice, threads, workers)
    # Batch only as far as the runtime gains from it, unless SPACE_MAX_BATCH_SIZE says otherwise.
    batch = settings.max_batch_size
    if "max_batch_size" not in settings.model_fields_set:
        batch = min(batch, runtime.max_batch)
    batcher = Batcher(metrics.counted(model.backend.logits), batch, settings.max_batch_wait_ms, workers)
    plan = Plan(workers=workers, threads=threads, cpus=cpus, max_batch=batch)
    log.info("inference plan", extra={"backend": model.info.backend, **vars(plan)})
    return Loaded(model, batcher, plan, draft_size(model.processor))
