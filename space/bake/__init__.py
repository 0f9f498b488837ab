"""Build-time bake step: put a model (and the example images) into a folder, prove it loads, record it.

``python -m space bake --model ID_OR_DIR --output DIR`` downloads a pinned snapshot from the Hugging Face
Hub (or copies a local folder) keeping only what inference needs, loads it offline with transformers,
classifies the examples, and writes ``vit-space-manifest.json`` (files with sha256, resolved commit, ...)
that the app shows in ``/info``. A Hub token comes from ``HF_TOKEN`` or ``--token-file`` and is never
written anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from space.backends.registry import NAMES, PRECISIONS, REFERENCE, RUNTIMES
from space.bake.fetch import (
    MANIFEST_NAME,
    BakeError,
    Example,
    _log,
    fetch_hub,
    fetch_local,
    gather_examples,
    is_local,
    read_token,
    sha256_file,
)
from space.model.folder import pytorch_weight_files


def prove(model_dir: Path, examples_dir: Path | None, examples: Sequence[Example]) -> tuple[int, list[dict]]:
    """Load the baked folder offline through the serving code, with the backend it will serve (``auto``),
    and classify the examples (a grey image if there are none).

    Returns the number of labels and one ``{file, label, score}`` per image; prints each top-1, scored
    as the server scores it (the model's default: softmax, or sigmoid for multi-label models).
    """
    from PIL import Image

    from space.serving.params import Params
    from space.serving.service import ClassificationService
    from space.settings import Settings

    service = ClassificationService(
        Settings(model=str(model_dir), backend="auto", precision="auto", threads=1)
    )
    try:
        service.load()
    except Exception as exc:
        raise BakeError(f"the baked model does not load offline: {type(exc).__name__}: {exc}") from None
    info = service.model.info
    height, width = info.image_size
    images = [(e.file, Image.open(examples_dir / e.file).convert("RGB"), e.expected) for e in examples]
    if not images:
        images = [(f"<grey {width}x{height}>", Image.new("RGB", (width, height), (128, 128, 128)), [])]
    try:
        rankings = asyncio.run(service.classify([image for _, image, _ in images], Params(top_k=1)))
    finally:
        service.close()
    results = []
    for (name, _, expected), [top] in zip(images, rankings, strict=True):
        print(f"{name}: {top.label} ({top.score:.3f}) [{info.backend}]", flush=True)
        if expected and top.label not in expected:
            _log(f"WARNING: {name}: top-1 {top.label!r} is not among the expected {expected}")
        results.append({"file": name, "label": top.label, "score": round(top.score, 4)})
    return info.num_labels, results


def optimize_model(
    model_dir: Path,
    backend: str,
    precision: str,
    photos: Sequence[Path],
    calibration_dir: Path | None = None,
    min_top1: float = 1.0,
    measure_seconds: float | None = None,
    calibration_size: int | None = None,
    float_groups: int | None = None,
) -> dict[str, Any]:
    """Export and accuracy-check the serving backend in ``model_dir`` (writes ``optimized.json``); with
    ``auto``, the fastest that passes the guard on this CPU. ``photos`` are the guard's; static int8
    calibrates on ``calibration_dir`` (default: gradio's bundled photos), less any of them."""
    from space.bake.export import export_optimized  # torch, onnx, NNCF load only when asked

    try:
        path = export_optimized(
            model_dir,
            model_dir,
            backend=backend,
            precision=precision,
            photos=photos,
            calibration_dir=calibration_dir,
            min_top1=min_top1,
            measure_seconds=measure_seconds,
            calibration_size=calibration_size,
            float_groups=float_groups,
        )
    except Exception as exc:
        raise BakeError(f"optimising ({backend}, {precision}) failed: {type(exc).__name__}: {exc}") from None
    choice = json.loads(path.read_text(encoding="utf-8"))
    for item in choice.get("measured", []):
        speed = item["speed"]
        _log(
            f"measured {item['backend']} {item['precision']}: {speed['images_per_s']} images/s under load, "
            f"{speed['lone_p50_ms']} ms alone, batch of {speed['max_batch']} {speed['batch_images_per_s']} "
            f"images/s; guard min cosine {item['min_cosine']}"
        )
    _log(f"optimised: serving {choice.get('backend')} {choice.get('precision')} ({choice.get('file')})")
    if choice.get("why"):
        _log(f"why: {choice['why']}")
    return choice


def make_lean(model_dir: Path, choice: dict[str, Any]) -> list[str]:
    """Remove the PyTorch weights when another runtime serves: its file holds the weights, and the server
    never reads these (a torch bake keeps them). Returns the names removed."""
    if choice.get("backend") == REFERENCE[0].name:
        return []
    removed = []
    for path in pytorch_weight_files(model_dir):
        path.unlink()
        removed.append(path.name)
    if removed:
        _log(f"lean folder for {choice.get('backend')}: removed {', '.join(removed)} (not served)")
    return removed


def _versions() -> dict[str, str]:
    names = (*(spec.package for spec in RUNTIMES), "transformers", "nncf", "huggingface_hub", "safetensors")
    names += ("pillow",)
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
    keep_pytorch_weights: bool = False,
    calibration_dir: Path | None = None,
    min_top1: float = 1.0,
    measure_seconds: float | None = None,
    calibration_size: int | None = None,
    float_groups: int | None = None,
) -> dict[str, Any]:
    """Fetch, verify and describe a model in ``output``; returns the manifest it wrote.

    ``optimize`` other than ``none`` also exports the faster runtime the app serves (checked against fp32
    by the accuracy guard, :mod:`space.bake.export`) into ``output``; when that is not PyTorch the
    folder is made lean (no PyTorch weights) unless ``keep_pytorch_weights``. The proof
    classifies the examples through the serving code, with the backend that will serve.
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
        if optimize != "none":
            photos = [examples_dir / e.file for e in examples] if examples_dir else []
            choice = optimize_model(
                output,
                optimize,
                precision,
                photos,
                calibration_dir,
                min_top1,
                measure_seconds,
                calibration_size,
                float_groups,
            )
            if not keep_pytorch_weights:
                make_lean(output, choice)
        num_labels, results = prove(output, examples_dir, examples)  # what will serve, as it will serve
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
        choices=("none", "auto", *NAMES),
        default="none",
        help="also export a faster serving backend, accuracy-checked (auto: the fastest that passes the "
        "guard, measured on THIS machine's CPU)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="with --optimize (auto: measure each the backend supports)",
    )
    parser.add_argument(
        "--calibration-dir",
        type=Path,
        default=None,
        help="photos to calibrate static int8 on (default: gradio's bundled photos); any with the same "
        "bytes as an example photo is left out, since the accuracy guard evaluates on those",
    )
    parser.add_argument(
        "--calibration-size",
        type=int,
        default=None,
        help="inputs (augmented crops of those photos) static int8 calibrates on (default 300, NNCF's own "
        "default); fewer bake faster and may calibrate worse, which the accuracy guard then measures",
    )
    parser.add_argument(
        "--float-groups",
        type=int,
        default=None,
        help="static int8's accuracy control: groups of operations it may put back in float to hold the "
        "validation bound (default 12); 0 quantises everything, faster to bake, and leaves the accuracy "
        "guard to judge",
    )
    parser.add_argument(
        "--measure-seconds",
        type=float,
        default=None,
        help="with auto: seconds per speed figure and candidate (default 2; three figures each)",
    )
    parser.add_argument(
        "--min-top1-agreement",
        type=float,
        default=1.0,
        help="share of example photos that must keep their fp32 top-1 label (default: all); 0 only for "
        "a model with random weights (benchmarks), whose top-1 is a near-tie that any rounding flips",
    )
    parser.add_argument(
        "--keep-pytorch-weights",
        action="store_true",
        help="with --optimize for another runtime: keep the PyTorch weights (default: a lean folder)",
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
            keep_pytorch_weights=getattr(args, "keep_pytorch_weights", False),
            calibration_dir=getattr(args, "calibration_dir", None),
            min_top1=getattr(args, "min_top1_agreement", 1.0),
            measure_seconds=getattr(args, "measure_seconds", None),
            calibration_size=getattr(args, "calibration_size", None),
            float_groups=getattr(args, "float_groups", None),
        )
    except BakeError as exc:
        raise SystemExit(f"bake: error: {exc}") from None
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m space.bake`` (``space/bake/__main__.py``)."""
    parser = argparse.ArgumentParser(prog="python -m space bake", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))
