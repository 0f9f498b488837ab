"""Build-time bake step: put a model (and the example images) into a folder, prove it loads, record it.

``python -m space bake --model ID_OR_DIR --output DIR`` downloads a pinned snapshot from the Hugging Face
Hub (or copies a local folder) keeping only what inference needs, loads it offline with transformers,
classifies the examples, and writes ``vit-space-manifest.json`` (files with sha256, resolved commit, ...)
that the app shows in ``/info``. A Hub token comes from ``HF_TOKEN`` or ``--token-file`` and is never
written anywhere.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import shutil
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_NAME = "vit-space-manifest.json"
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
            f"cannot download {repo_id}@{revision or 'main'}: {type(exc).__name__}: {exc}"
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


def prove(model_dir: Path, examples_dir: Path | None, examples: Sequence[Example]) -> tuple[int, list[dict]]:
    """Load the baked folder offline and classify the examples (a grey image if there are none).

    Returns the number of labels and one ``{file, label, score}`` per image; prints each top-1, scored
    as the server scores it (the model's default: softmax, or sigmoid for multi-label models).
    """
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from space.classifier import default_function, processed_size, scores

    try:
        processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForImageClassification.from_pretrained(model_dir, local_files_only=True).eval()
    except Exception as exc:
        raise BakeError(f"the baked model does not load offline: {type(exc).__name__}: {exc}") from None
    height, width = processed_size(processor)
    id2label, function = model.config.id2label, default_function(model.config)
    images = [(e.file, Image.open(examples_dir / e.file).convert("RGB"), e.expected) for e in examples]
    if not images:
        images = [(f"<grey {width}x{height}>", Image.new("RGB", (width, height), (128, 128, 128)), [])]
    results = []
    for name, image, expected in images:
        with torch.inference_mode():
            logits = model(**processor(images=image, return_tensors="pt")).logits[0].float().numpy()
        values = scores(logits, function)
        idx = int(values.argmax())
        label, score = id2label[idx], float(values[idx])
        print(f"{name}: {label} ({score:.3f})", flush=True)
        if expected and label not in expected:
            _log(f"WARNING: {name}: top-1 {label!r} is not among the expected {expected}")
        results.append({"file": name, "label": label, "score": round(score, 4)})
    return len(id2label), results


def optimize_model(model_dir: Path, backend: str, precision: str, photos: Sequence[Path]) -> None:
    """Export and accuracy-check the serving backend in ``model_dir`` (writes ``optimized.json``)."""
    from space.backends import export_optimized  # onnx/onnxruntime load only when asked

    try:
        path = export_optimized(model_dir, model_dir, backend=backend, precision=precision, photos=photos)
    except Exception as exc:
        raise BakeError(f"optimising ({backend}, {precision}) failed: {type(exc).__name__}: {exc}") from None
    choice = json.loads(path.read_text(encoding="utf-8"))
    _log(f"optimised: serving {choice.get('backend')} {choice.get('precision')} ({choice.get('file')})")


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "huggingface_hub", "safetensors", "pillow")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), **found}


def bake(
    model: str,
    output: Path,
    revision: str | None = None,
    examples_manifest: Path | None = None,
    examples_dir: Path | None = None,
    examples_from: Path | None = None,
    token_file: Path | None = None,
    optimize: str = "none",
    precision: str = "auto",
) -> dict[str, Any]:
    """Fetch, verify and describe a model in ``output``; returns the manifest it wrote.

    ``optimize`` other than ``none`` also exports the faster backend the app serves (``space.backends``:
    ONNX Runtime or bf16, checked against fp32 by its accuracy guard) into ``output``.
    """
    if output.exists() and any(output.iterdir()):
        raise BakeError(f"output folder is not empty: {output}")
    local, revision = is_local(model), revision or None
    if local and not Path(model).expanduser().is_dir():
        raise BakeError(f"model folder not found: {model}")
    if local and revision:
        _log(f"note: --revision {revision} does not apply to a local folder; ignored")
        revision = None
    output.mkdir(parents=True, exist_ok=True)
    try:
        if local:
            src = Path(model).expanduser().resolve()
            _log(f"copying {src}")
            fetch_local(src, output)
            commit, source = None, {"type": "local", "path": str(src)}
        else:
            commit = fetch_hub(model, revision, output, read_token(token_file))
            source = {"type": "hub", "repo_id": model}
        examples: list[Example] = []
        if examples_dir is not None and (examples_manifest is not None or examples_from is not None):
            examples = gather_examples(examples_manifest, examples_dir, examples_from)
            _log(f"{len(examples)} example image(s) in {examples_dir}")
        num_labels, results = prove(output, examples_dir, examples)
        if optimize != "none":
            optimize_model(output, optimize, precision, [examples_dir / e.file for e in examples])
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    files = sorted(p for p in output.iterdir() if p.is_file())
    manifest = {
        "model_id": model if not local else source["path"],
        "revision": revision,
        "commit_sha": commit,
        "source": source,
        "num_labels": num_labels,
        "files": [{"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)} for p in files],
        "examples": results if examples else [],
        "versions": _versions(),
        "baked_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (output / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    _log(f"baked {manifest['model_id']} ({num_labels} labels, {len(files)} files) into {output}")
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bake`` subcommand's options."""
    parser.add_argument("--model", required=True, help="Hub repo id, or a local model folder")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit sha (default: main)")
    parser.add_argument("--output", required=True, type=Path, help="folder to bake the model into")
    parser.add_argument("--examples-manifest", type=Path, default=None, help="examples/manifest.json")
    parser.add_argument("--examples-dir", type=Path, default=None, help="folder to put the example images in")
    parser.add_argument(
        "--examples-from", type=Path, default=None, help="copy example images from this folder, no downloads"
    )
    parser.add_argument(
        "--token-file", type=Path, default=None, help="file holding a Hub token (else HF_TOKEN is used)"
    )
    parser.add_argument(
        "--optimize",
        choices=("none", "auto", "onnxruntime", "torch"),
        default="none",
        help="also export a faster serving backend, accuracy-checked (auto: fastest on THIS machine's CPU)",
    )
    parser.add_argument(
        "--precision", choices=("auto", "fp32", "int8", "bf16"), default="auto", help="with --optimize"
    )


def main_from_args(args: argparse.Namespace) -> int:
    """Run the bake for parsed arguments; a failure exits non-zero with one clear line."""
    try:
        bake(
            args.model,
            args.output,
            revision=args.revision,
            examples_manifest=args.examples_manifest,
            examples_dir=args.examples_dir,
            examples_from=args.examples_from,
            token_file=args.token_file,
            optimize=getattr(args, "optimize", "none"),
            precision=getattr(args, "precision", "auto"),
        )
    except BakeError as exc:
        raise SystemExit(f"bake: error: {exc}") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m space.bake``."""
    parser = argparse.ArgumentParser(prog="python -m space bake", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
