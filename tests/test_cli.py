"""The command line as a user runs it, and the settings it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from space.settings import Settings, load_settings
from tests.conftest import REPO, Photo


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SPACE_") and k != "PORT"}
    return subprocess.run(
        [sys.executable, "-m", "space", *args],
        cwd=REPO,
        env={**full_env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_predict_prints_one_json_object_per_image(
    real_model: Path, photos: list[Photo], tmp_path: Path
) -> None:
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    chosen = photos[:3]
    result = run_cli(
        "predict",
        *(str(p.path) for p in chosen),
        str(not_an_image),
        "--model",
        str(real_model),
        "--top-k",
        "2",
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4
    for photo, line in zip(chosen, lines, strict=False):
        assert line["file"] == str(photo.path)
        assert len(line["predictions"]) == 2 and line["predictions"][0]["label"] in photo.accepted
    assert "not an image" in lines[3]["error"]
    assert result.returncode == 1  # one file failed


def test_predict_with_the_tiny_vit_from_env(tiny_vit: Path, photos: list[Photo]) -> None:
    result = run_cli("predict", str(photos[0].path), env={"SPACE_MODEL": str(tiny_vit), "SPACE_TOP_K": "4"})
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["predictions"]) == 4


def test_missing_model_fails_with_how_to_fix_it_not_a_traceback(tmp_path: Path) -> None:
    for args in (
        ["serve", "--model", "google/vit-base-patch16-224"],
        ["serve", "--model", str(tmp_path / "nope")],
    ):
        result = run_cli(*args, env={"HF_HOME": str(tmp_path / "hf")})
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and "SPACE_MODEL" in result.stderr
    assert "bake" in result.stderr or "folder" in result.stderr


def test_invalid_setting_fails_with_one_line_naming_the_variable() -> None:
    for env, name in (
        ({"SPACE_TOP_K": "abc"}, "SPACE_TOP_K"),
        ({"PORT": "70000"}, "PORT"),
        ({"SPACE_LOG_LEVEL": "loud"}, "SPACE_LOG_LEVEL"),
    ):
        result = run_cli("serve", env=env)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and name in result.stderr, result.stderr


def test_help_documents_every_setting() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in (
        "--model",
        "--revision",
        "--top-k",
        "--host",
        "--port",
        "--examples-dir",
        "--max-upload-mb",
        "--max-pixels",
        "--threads",
        "--log-level",
    ):
        assert flag in result.stdout
    assert "env SPACE_PORT or PORT" in " ".join(result.stdout.split())


def test_settings_defaults_env_and_flag_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SPACE_") or key == "PORT":
            monkeypatch.delenv(key)
    defaults = Settings()
    assert (defaults.model, defaults.top_k, defaults.host, defaults.port) == (
        "google/vit-base-patch16-224",
        5,
        "127.0.0.1",
        7860,
    )
    assert defaults.max_upload_bytes == 10 * 1024 * 1024 and defaults.max_pixels == 40_000_000
    monkeypatch.setenv("PORT", "8080")
    assert load_settings().port == 8080
    monkeypatch.setenv("SPACE_PORT", "9000")
    assert load_settings().port == 9000
    assert load_settings(port=9100, top_k=None).port == 9100
