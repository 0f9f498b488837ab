"""The model folder: where a model id or path lives on disk (never downloading), and what the bake step
wrote beside the weights (its manifest, and ``optimized.json``: the backend it exported and checked)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from space.errors import ModelUnavailable

log = logging.getLogger(__name__)

BAKE_MANIFEST = "vit-space-manifest.json"  # written by the bake step: files, sha256, commit, examples
OPTIMIZED_MANIFEST = "optimized.json"  # written by the bake step's export: backend, file, guard report
OPENVINO_PREFIX = "openvino-"  # an OpenVINO model: openvino-<precision>.xml and its weights, .bin
PYTORCH_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def resolve_model(model: str, revision: str | None) -> tuple[Path, str | None]:
    """The local folder holding ``model`` and its commit, without any network access.

    ``model`` is either a folder, or a Hub id looked up in the local Hugging Face cache only.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder.resolve(), revision
    if folder.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelUnavailable(
            f"SPACE_MODEL={model!r} is not a folder. Point SPACE_MODEL at a folder that holds the model's "
            "config.json, preprocessor_config.json and weights, or at a Hub model id."
        )
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception as error:
        at = f" at revision {revision!r}" if revision else ""
        raise ModelUnavailable(
            f"The model {model!r}{at} is not available offline ({type(error).__name__}), and this app "
            "never downloads at run time. Fix: bake it first with `python -m space bake --model "
            f"{model}{' --revision ' + revision if revision else ''} --output models/baked` and set "
            "SPACE_MODEL=models/baked, or point SPACE_MODEL at a local model folder, or download it into "
            "the Hugging Face cache (`hf download`) before starting."
        ) from None
    return path, path.name


def read_json(path: Path) -> dict[str, Any] | None:
    """A manifest written by the bake step, or None if absent; an unreadable one is logged and ignored."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("unreadable %s; ignoring it", path)
        return None


def read_bake_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The bake step's ``vit-space-manifest.json`` (shown in ``/info``), if there is one."""
    return read_json(Path(model_dir) / BAKE_MANIFEST)


def read_optimized(model_dir: Path) -> dict[str, Any] | None:
    """The bake step's choice (``optimized.json``) in the model folder, if there is one."""
    return read_json(Path(model_dir) / OPTIMIZED_MANIFEST)


def pytorch_weight_files(model_dir: Path) -> list[Path]:
    """The folder's PyTorch weight files; an OpenVINO model's ``openvino-*.bin`` is not one of them."""
    found = {path for pattern in PYTORCH_WEIGHTS for path in Path(model_dir).glob(pattern)}
    return sorted(path for path in found if not path.name.startswith(OPENVINO_PREFIX))


def has_pytorch_weights(model_dir: Path) -> bool:
    """Whether the folder holds PyTorch weights (a lean bake for another runtime does not)."""
    return bool(pytorch_weight_files(model_dir))
