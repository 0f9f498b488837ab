"""Request batching across users: same answers as one at a time, and no waiting for a lone request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from space.model import cpu
from space.serving.batching import Batcher
from space.serving.classifier import Classifier
from space.serving.images import ImageLimits, decode, draft_size, read_file
from tests.conftest import Photo, Server, loaded_service, predict_alone


@pytest.fixture(scope="module")
def real_classifier(real_model: Path) -> Iterator[Classifier]:
    service = loaded_service(real_model, backend="torch", precision="fp32")
    yield service.model
    service.close()


def _pixels(model: Classifier, photos: list[Photo]) -> list[np.ndarray]:
    return [model.preprocess([read_file(p.path, ImageLimits())])[0] for p in photos]


def test_concurrent_requests_are_batched_and_answered_as_alone(
    real_classifier: Classifier, photos: list[Photo]
) -> None:
    pixels = _pixels(real_classifier, photos)
    alone = [real_classifier.backend.logits(p[None])[0] for p in pixels]
    sizes: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return real_classifier.backend.logits(batch)

    batcher = Batcher(run, max_batch_size=8, max_wait_ms=50, workers=1)
    start = threading.Barrier(len(pixels))

    def request(index: int) -> np.ndarray:
        start.wait()
        return batcher.submit(pixels[index])

    try:
        with ThreadPoolExecutor(len(pixels)) as pool:
            together = list(pool.map(request, range(len(pixels))))
    finally:
        batcher.close()
    assert sum(sizes) == len(pixels) and max(sizes) > 1 and max(sizes) <= 8  # batched, within the limit
    for photo, want, got in zip(photos, alone, together, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=photo.path.name)
        assert got.argmax() == want.argmax(), photo.path.name


def test_a_lone_request_does_not_wait_for_company(real_classifier: Classifier, photos: list[Photo]) -> None:
    pixels = _pixels(real_classifier, photos[:1])[0]
    wait_ms = 3000  # far above one inference: if a lone request waited for the bound, it would show
    batcher = Batcher(real_classifier.backend.logits, max_batch_size=8, max_wait_ms=wait_ms, workers=2)
    try:
        batcher.submit(pixels)  # warm
        began = time.perf_counter()
        batcher.submit(pixels)
        took = time.perf_counter() - began
    finally:
        batcher.close()
    assert batcher.batches == 2 and batcher.items == 2
    assert took < wait_ms / 1000 / 2, took


def test_a_request_waits_at_most_the_bound_for_company(
    real_classifier: Classifier, photos: list[Photo]
) -> None:
    """Two requests queued behind a busy worker form one batch; that batch does not wait for a third."""
    pixels = _pixels(real_classifier, photos[:2])
    release = threading.Event()
    calls: list[tuple[int, float]] = []

    def run(batch: np.ndarray) -> np.ndarray:
        release.wait(30)  # the first call holds the worker until both others are queued
        calls.append((len(batch), time.perf_counter()))
        return real_classifier.backend.logits(batch)

    wait_ms = 400
    batcher = Batcher(run, max_batch_size=8, max_wait_ms=wait_ms, workers=1)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.submit, pixels[0])
        time.sleep(0.2)
        queued = [pool.submit(batcher.submit, p) for p in pixels]
        time.sleep(0.2)
        released = time.perf_counter()
        release.set()
        [future.result(30) for future in (first, *queued)]
    batcher.close()
    assert [size for size, _ in calls] == [1, 2]
    # The batch of two waited for a third that never came: at most the bound (plus scheduling slack).
    assert calls[1][1] - released < wait_ms / 1000 + 2.0
    assert calls[1][1] - released >= wait_ms / 1000 * 0.9


def test_different_shapes_are_separate_calls(real_classifier: Classifier, photos: list[Photo]) -> None:
    pixels = _pixels(real_classifier, photos[:1])[0]
    smaller = np.ascontiguousarray(pixels[:, :192, :192])  # a CNN takes any size; a batch needs one
    batcher = Batcher(real_classifier.backend.logits, max_batch_size=8, max_wait_ms=200, workers=1)
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.submit, p) for p in (pixels, smaller, pixels, smaller)]
            rows = [f.result(60) for f in futures]
    finally:
        batcher.close()
    np.testing.assert_allclose(rows[0], real_classifier.backend.logits(pixels[None])[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        rows[1], real_classifier.backend.logits(smaller[None])[0], rtol=1e-4, atol=1e-4
    )
    assert batcher.items == 4


def test_errors_reach_every_request_of_the_batch(real_classifier: Classifier) -> None:
    batcher = Batcher(real_classifier.backend.logits, max_batch_size=4, max_wait_ms=1, workers=1)
    try:
        with pytest.raises(RuntimeError):  # wrong shape: the backend itself refuses it
            batcher.submit(np.zeros((3, 7, 7), dtype=np.float32))
        assert batcher.submit(np.zeros((3, 224, 224), dtype=np.float32)).shape == (
            real_classifier.num_labels,
        )
    finally:
        batcher.close()


def test_concurrent_http_requests_match_one_at_a_time(
    real_server: Server, real_classifier: Classifier, photos: list[Photo]
) -> None:
    """Through the real server (batching on by default), 13 photos at once: the answers of one-by-one."""

    def post(photo: Photo) -> list[dict[str, object]]:
        with real_server.client() as http:
            response = http.post("/predict?top_k=3", content=photo.path.read_bytes())
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(len(photos)) as pool:
        answers = list(pool.map(post, photos))
    for photo, answer in zip(photos, answers, strict=True):
        # One at a time, as an unbatched server would: same decoding (with draft), processor and model.
        image = decode(photo.path.read_bytes(), ImageLimits(), draft_size(real_classifier.processor))
        want = predict_alone(real_classifier, image, 3)
        assert [a["label"] for a in answer] == [p.label for p in want], photo.path.name
        np.testing.assert_allclose([a["score"] for a in answer], [p.score for p in want], atol=1e-4)


def test_workers_and_threads_follow_the_cpu_budget(tiny_vit: Path) -> None:
    import torch

    cpus = cpu.available_cpus()
    default = loaded_service(tiny_vit, backend="torch")
    default.close()
    assert vars(default.plan) == {"workers": 1, "threads": cpus, "cpus": cpus, "max_batch": 8}  # all CPUs
    assert torch.get_num_threads() == cpus
    service = loaded_service(tiny_vit, backend="torch", threads=1, workers=2, max_batch_size=3)
    service.close()
    assert vars(service.plan) == {"workers": 2, "threads": 1, "cpus": cpus, "max_batch": 3}
    assert torch.get_num_threads() == 1
