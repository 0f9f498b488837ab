"""Bake step, fetching: the inference files of a model from the Hub (pinned commit) or a local folder,
and the example images (checked against their sha256). A Hub token is read, used and never written."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from space.model.folder import BAKE_MANIFEST

MANIFEST_NAME = BAKE_MANIFEST
EXAMPLES_MANIFEST_NAME = "manifest.json"
BASE_PATTERNS = ("config.json", "preprocessor_config.json")
SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
BIN_PATTERNS = ("*.bin", "*.bin.index.json")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DOWNLOAD_TIMEOUT_S = 30.0


class BakeError(Exception):
    """A bake failure with a message meant for the person running the build."""


@dataclass
class Example:
    """One example image: where it lives and what it is expected to be."""

    file: str
    sha256: str | None = None
    expected: list[str] = field(default_factory=list)


def _log(msg: str) -> None:
    print(f"bake: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def weight_patterns(repo_files: Iterable[str]) -> list[str]:
    """Allow-patterns: config, preprocessor config, safetensors; ``*.bin`` only without safetensors."""
    top_level = [name for name in repo_files if "/" not in name]
    has_safetensors = any(fnmatch.fnmatch(name, "*.safetensors") for name in top_level)
    return [*BASE_PATTERNS, *(SAFETENSORS_PATTERNS if has_safetensors else BIN_PATTERNS)]


def select_files(repo_files: Iterable[str]) -> list[str]:
    """The top-level files of a repo (or folder) that inference needs, sorted."""
    names = sorted(set(repo_files))
    patterns = weight_patterns(names)
    return [n for n in names if "/" not in n and any(fnmatch.fnmatch(n, p) for p in patterns)]


def read_token(token_file: Path | None) -> str | None:
    """The Hub token from ``--token-file`` (e.g. a BuildKit secret) or ``HF_TOKEN``; None if neither."""
    if token_file is not None and token_file.is_file():
        token = token_file.read_text(encoding="utf-8").strip()
        if token:
            return token
    return os.environ.get("HF_TOKEN", "").strip() or None


def is_local(model: str) -> bool:
    """Whether ``model`` names a local folder rather than a Hub repo id."""
    return model.startswith(("/", "./", "../", "~")) or model in {".", ".."} or Path(model).exists()


def fetch_local(src: Path, out: Path) -> None:
    """Copy the inference files of a local model folder into ``out``."""
    if not src.is_dir():
        raise BakeError(f"model folder not found: {src}")
    files = select_files(p.name for p in src.iterdir() if p.is_file())
    if "config.json" not in files:
        raise BakeError(f"{src} has no config.json: not a transformers model folder")
    for name in files:
        shutil.copyfile(src / name, out / name)


# What a new user without Hub access can do instead (a first `make run` on such a machine ends here).
OFFLINE_HINT = (
    "Without access to the Hugging Face Hub, serve a local model folder instead: "
    "`make run MODEL=path/to/model-folder` (or `python -m space serve --model path/to/model-folder`); "
    "the real ImageNet model that `make test` builds is one: "
    "`make run MODEL=.cache/models/efficientnet-lite0-imagenet` (build it alone with "
    "`.venv/bin/python -m tests.real_model`)."
)


def fetch_hub(repo_id: str, revision: str | None, out: Path, token: str | None) -> str:
    """Download the inference files of a Hub repo at ``revision`` into ``out``; returns the commit sha."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token)
        files = select_files(s.rfilename for s in info.siblings or [])
        if "config.json" not in files:
            raise BakeError(f"{repo_id}@{info.sha} has no config.json: not a transformers model repo")
        _log(f"downloading {repo_id}@{info.sha}: {', '.join(files)}")
        snapshot_download(repo_id, revision=info.sha, allow_patterns=files, local_dir=out, token=token)
    except BakeError:
        raise
    except Exception as exc:  # network, auth, missing repo/revision: all end the build the same way
        raise BakeError(
            f"cannot download {repo_id}@{revision or 'main'}: {type(exc).__name__}: {exc}. {OFFLINE_HINT}"
        ) from None
    shutil.rmtree(out / ".cache", ignore_errors=True)  # snapshot_download's bookkeeping, not needed
    if not info.sha:
        raise BakeError(f"the Hub did not resolve a commit for {repo_id}@{revision}")
    return info.sha


def read_examples_manifest(path: Path | None) -> list[Example]:
    """The examples listed in ``examples/manifest.json`` (empty if no manifest is given)."""
    if path is None:
        return []
    if not path.is_file():
        raise BakeError(f"examples manifest not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        Example(file=i["file"], sha256=i.get("sha256"), expected=list(i.get("expected") or []))
        for i in data.get("images", [])
    ]


def _accept(path: Path, ex: Example, origin: str) -> bool:
    """Keep ``path`` if its sha256 matches the manifest (or none is given); otherwise warn and delete it."""
    if ex.sha256 and sha256_file(path) != ex.sha256.lower():
        _log(f"WARNING: {ex.file} from {origin} does not match its sha256; skipped")
        path.unlink()
        return False
    return True


def gather_examples(manifest: Path | None, out: Path, examples_from: Path | None) -> list[Example]:
    """Put the example images into ``out``: from ``examples_from``, beside the manifest, or their URLs.

    A missing or failed example is a warning, never an error.
    """
    listed = read_examples_manifest(manifest)
    raw = json.loads(manifest.read_text(encoding="utf-8")) if manifest else {}
    url_of = {i["file"]: i.get("url") for i in raw.get("images", [])}
    out.mkdir(parents=True, exist_ok=True)
    kept: list[Example] = []
    if examples_from is not None:
        if not examples_from.is_dir():
            raise BakeError(f"--examples-from folder not found: {examples_from}")
        by_name = {e.file: e for e in listed}
        for src in sorted(examples_from.iterdir()):
            if src.is_file() and src.suffix.lower() in IMAGE_SUFFIXES:
                ex = by_name.pop(src.name, Example(file=src.name))
                shutil.copyfile(src, out / src.name)
                if _accept(out / src.name, ex, str(examples_from)):
                    kept.append(ex)
        for ex in by_name.values():
            _log(f"WARNING: example {ex.file} is not in {examples_from}; skipped")
    else:
        for ex in listed:
            dest, beside = out / ex.file, manifest.parent / ex.file if manifest else None
            if beside is not None and beside.is_file():
                shutil.copyfile(beside, dest)
                origin = str(beside)
            elif url_of.get(ex.file):
                origin = str(url_of[ex.file])
                try:
                    req = urllib.request.Request(origin, headers={"User-Agent": "vit-space-bake"})
                    with (
                        urllib.request.urlopen(req, timeout=DOWNLOAD_TIMEOUT_S) as resp,
                        dest.open("wb") as fh,
                    ):
                        shutil.copyfileobj(resp, fh)
                except Exception as exc:
                    dest.unlink(missing_ok=True)
                    _log(f"WARNING: could not download example {ex.file} from {origin}: {exc}")
                    continue
            else:
                _log(f"WARNING: example {ex.file} has no local copy and no URL; skipped")
                continue
            if _accept(dest, ex, origin):
                kept.append(ex)
    for ex in kept:
        ex.sha256 = sha256_file(out / ex.file)
    doc = {"images": [{"file": e.file, "sha256": e.sha256, "expected": e.expected} for e in kept]}
    (out / EXAMPLES_MANIFEST_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return kept
