"""The bake step, for real: bakes the real EfficientNet-Lite0 folder (no Hub here) and checks the result."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from space import bake
from space.bake import fetch
from tests.conftest import PHOTOS, REPO

FAKE_TOKEN = "hf_bakeTestTokenThatMustNeverBeWritten"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _accepted() -> dict[str, set[str]]:
    with (PHOTOS / "labels.csv").open(newline="") as fh:
        return {r["file"]: {s.strip() for s in r["accepted_labels"].split("|")} for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory, real_model: Path) -> tuple[Path, Path, dict]:
    """One real bake of the real model with the test photos, an HF_TOKEN set in the environment."""
    root = tmp_path_factory.mktemp("baked")
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = FAKE_TOKEN
    try:
        manifest = bake.bake(
            str(real_model),
            root / "model",
            examples_manifest=REPO / "examples" / "manifest.json",
            examples_dir=root / "examples",
            examples_from=PHOTOS,
        )
    finally:
        if old is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = old
    return root / "model", root / "examples", manifest


@pytest.mark.bake
def test_manifest_describes_the_baked_files(baked: tuple[Path, Path, dict], real_model: Path) -> None:
    model_dir, _, manifest = baked
    on_disk = json.loads((model_dir / "vit-space-manifest.json").read_text())
    assert on_disk == manifest
    names = [f["name"] for f in manifest["files"]]
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    for entry in manifest["files"]:
        path = model_dir / entry["name"]
        assert entry["sha256"] == _sha(path) == _sha(real_model / entry["name"])
        assert entry["size"] == path.stat().st_size
    assert manifest["num_labels"] == 1000
    assert manifest["source"] == {"type": "local", "path": str(real_model.resolve())}
    assert manifest["commit_sha"] is None
    assert {"python", "torch", "transformers"} <= manifest["versions"].keys()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["baked_at"])
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([*names, "vit-space-manifest.json"])


@pytest.mark.bake
def test_examples_are_copied_and_classified(baked: tuple[Path, Path, dict]) -> None:
    _, examples_dir, manifest = baked
    accepted = _accepted()
    assert sorted(p.name for p in examples_dir.iterdir()) == sorted([*accepted, "manifest.json"])
    listed = json.loads((examples_dir / "manifest.json").read_text())["images"]
    assert {i["file"]: i["sha256"] for i in listed} == {f: _sha(PHOTOS / f) for f in accepted}
    tops = {r["file"]: r["label"] for r in manifest["examples"]}
    assert tops.keys() == accepted.keys()
    wrong = {f: label for f, label in tops.items() if label not in accepted[f]}
    assert not wrong, f"top-1 outside the accepted labels: {wrong}"


@pytest.mark.bake
def test_no_token_is_written(baked: tuple[Path, Path, dict]) -> None:
    model_dir, examples_dir, _ = baked
    for path in [*model_dir.rglob("*"), *examples_dir.rglob("*")]:
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.bake
def test_only_inference_files_are_copied(tmp_path: Path, real_model: Path) -> None:
    src = tmp_path / "src"
    (src / "onnx").mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        (src / name).symlink_to(real_model / name)
    for stray in ("pytorch_model.bin", "README.md", "flax_model.msgpack", "tf_model.h5", ".gitattributes"):
        (src / stray).write_bytes(b"not needed")
    (src / "onnx" / "model.safetensors").write_bytes(b"nested")
    manifest = bake.bake(str(src), tmp_path / "out", revision="main")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "vit-space-manifest.json",
    ]
    assert manifest["examples"] == []  # no examples: it proved itself on a grey image
    assert manifest["revision"] is None  # a revision means nothing for a local folder


def test_pattern_selection_prefers_safetensors() -> None:
    hub_files = [
        ".gitattributes",
        "README.md",
        "config.json",
        "flax_model.msgpack",
        "model.safetensors",
        "preprocessor_config.json",
        "pytorch_model.bin",
        "tf_model.h5",
    ]
    assert fetch.select_files(hub_files) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert "*.bin" not in fetch.weight_patterns(hub_files)
    sharded = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    sharded += ["model.safetensors.index.json", "pytorch_model.bin", "preprocessor_config.json"]
    assert "pytorch_model.bin" not in fetch.select_files(sharded)
    assert "model.safetensors.index.json" in fetch.select_files(sharded)


def test_pattern_selection_falls_back_to_bin() -> None:
    files = [
        "config.json",
        "preprocessor_config.json",
        "pytorch_model.bin",
        "tf_model.h5",
        "sub/x.safetensors",
    ]
    assert "*.bin" in fetch.weight_patterns(files)
    assert fetch.select_files(files) == ["config.json", "preprocessor_config.json", "pytorch_model.bin"]


def test_local_or_hub() -> None:
    assert not fetch.is_local("google/vit-base-patch16-224")
    assert fetch.is_local("/no/such/folder")
    assert fetch.is_local("./models/vit")


def test_an_unreachable_hub_says_how_to_serve_a_local_folder(tmp_path: Path) -> None:
    """A first `make run` on a machine without Hub access: one line that says what to do instead."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path)}
    command = [
        sys.executable,
        "-m",
        "space",
        "bake",
        "--model",
        "google/vit-base-patch16-224",
        "--output",
        str(out),
    ]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("bake: error: cannot download google/vit-base-patch16-224@main"), line
    assert "make run MODEL=.cache/models/efficientnet-lite0-imagenet" in line, line
    assert "python -m space serve --model" in line and "tests.real_model" in line, line
    assert not out.exists()


def test_missing_model_fails_clearly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "space", "bake", "--model", str(tmp_path / "nope"), "--output", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "bake: error: model folder not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.bake
def test_folder_without_config_fails_and_cleans_up(tmp_path: Path, real_model: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.safetensors").symlink_to(real_model / "model.safetensors")
    with pytest.raises(SystemExit) as exc:
        bake.main(["--model", str(tmp_path / "src"), "--output", str(tmp_path / "out")])
    assert "no config.json" in str(exc.value.code)
    assert not (tmp_path / "out").exists()


@pytest.mark.bake
def test_refuses_a_non_empty_output(tmp_path: Path, real_model: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        bake.main(["--model", str(real_model), "--output", str(tmp_path / "out")])
    assert "not empty" in str(exc.value.code)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.bake
def test_example_failures_are_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad checksum or a failed download skips that example; the good ones are still baked."""
    src = tmp_path / "examples"
    src.mkdir()
    (src / "zebra.jpg").symlink_to(PHOTOS / "zebra.jpg")
    (src / "lion.jpg").symlink_to(PHOTOS / "lion.jpg")
    manifest = src / "manifest.json"
    images = [
        {"file": "zebra.jpg", "url": None, "sha256": _sha(PHOTOS / "zebra.jpg"), "expected": ["zebra"]},
        {"file": "lion.jpg", "url": None, "sha256": "0" * 64, "expected": []},
        {"file": "gone.jpg", "url": "http://127.0.0.1:9/gone.jpg", "sha256": None, "expected": []},
    ]
    manifest.write_text(json.dumps({"images": images}))
    kept = fetch.gather_examples(manifest, tmp_path / "out", None)
    assert [e.file for e in kept] == ["zebra.jpg"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "zebra.jpg"]
    err = capsys.readouterr().err
    assert "WARNING: lion.jpg" in err and "sha256" in err
    assert "WARNING: could not download example gone.jpg" in err


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert fetch.read_token(None) is None
    assert fetch.read_token(tmp_path / "absent") is None  # an unset BuildKit secret is not an error
    (tmp_path / "tok").write_text(" hf_fromFile\n")
    monkeypatch.setenv("HF_TOKEN", "hf_fromEnv")
    assert fetch.read_token(tmp_path / "tok") == "hf_fromFile"
    assert fetch.read_token(None) == "hf_fromEnv"


@pytest.mark.bake
def test_optimize_records_the_serving_choice(tmp_path: Path, real_model: Path) -> None:
    """--optimize runs space.backends' export + accuracy guard; its files are in the bake manifest."""
    manifest = bake.bake(str(real_model), tmp_path / "out", optimize="torch", precision="fp32")
    chosen = json.loads((tmp_path / "out" / "optimized.json").read_text())
    assert (chosen["backend"], chosen["precision"]) == ("torch", "fp32")
    assert "optimized.json" in [f["name"] for f in manifest["files"]]


@pytest.mark.bake
def test_impossible_optimization_fails_clearly(tmp_path: Path, real_model: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        args = ["--model", str(real_model), "--output", str(tmp_path / "out")]
        bake.main([*args, "--optimize", "torch", "--precision", "int8"])
    assert "optimising (torch, int8) failed" in str(exc.value.code)
    assert not (tmp_path / "out").exists()
