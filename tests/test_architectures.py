"""The architecture matrix: any image-classification checkpoint, served and baked like its Hub original.

Each checkpoint is tiny, seeded and random (built in milliseconds), saved with the image processor
configuration its real Hub checkpoints use, sizes scaled down in proportion (224 -> 32): the resize and
crop rules are what differ between architectures, and what broke before (BEiT's unused ``crop_size``).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import InferenceClient
from PIL import Image

from space.backends.registry import pairs
from space.bake import BakeError, bake
from space.bake.guard import MIN_COSINE
from space.model.folder import OPTIMIZED_MANIFEST
from space.serving.service import ClassificationService
from tests.conftest import TEST_CALIBRATION_SIZE, Photo, Server, classify, loaded_service, wait_until_ready

pytestmark = [pytest.mark.server, pytest.mark.bake]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HALF = [0.5, 0.5, 0.5]
NUM_LABELS = 6
SEED = 1234
# Tiny transformer sizes shared by the ViT family.
TINY_VIT = dict(
    patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
)


@dataclass(frozen=True)
class Arch:
    """One architecture: its model and config class (tiny sizes) and its Hub processor config (scaled)."""

    name: str
    hub: str  # the checkpoint whose preprocessor_config.json this mirrors
    model_class: str
    config_class: str
    config: dict[str, Any]
    processor: dict[str, Any]
    problem_type: str | None = None


# Legacy ConvNeXt-style processor (ResNet, RegNet): resize the short side to size / crop_pct, crop `size`.
CROP_PCT_LEGACY = {
    "crop_pct": 0.875, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "ConvNextFeatureExtractor",
    "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "resample": 3, "size": 32,
}  # fmt: skip

ARCHES = [
    Arch(
        "vit", "google/vit-base-patch16-224", "ViTForImageClassification", "ViTConfig",
        {"image_size": 32, **TINY_VIT},
        {"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
         "image_mean": HALF, "image_std": HALF, "resample": 2, "size": 32},
    ),
    Arch(
        "deit", "facebook/deit-tiny-distilled-patch16-224", "DeiTForImageClassificationWithTeacher",
        "DeiTConfig", {"image_size": 32, **TINY_VIT},
        {"crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
         "feature_extractor_type": "DeiTFeatureExtractor", "image_mean": IMAGENET_MEAN,
         "image_std": IMAGENET_STD, "resample": 3, "size": 37},
    ),
    Arch(  # do_center_crop false: the crop_size left in the file (the class default, 224) is unused
        "beit", "microsoft/beit-base-patch16-224", "BeitForImageClassification", "BeitConfig",
        {"image_size": 32, **TINY_VIT, "use_relative_position_bias": True, "use_mean_pooling": True,
         "layer_scale_init_value": 0.1},
        {"crop_size": 224, "do_center_crop": False, "do_normalize": True, "do_resize": True,
         "feature_extractor_type": "BeitFeatureExtractor", "image_mean": HALF, "image_std": HALF,
         "reduce_labels": False, "resample": 2, "size": 32},
    ),
    Arch(
        "swin", "microsoft/swin-tiny-patch4-window7-224", "SwinForImageClassification", "SwinConfig",
        {"image_size": 32, "patch_size": 4, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2],
         "window_size": 4},
        {"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
         "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "resample": 3, "size": 32},
    ),
    Arch(  # the newer processor format of facebook/convnextv2-tiny-1k-224
        "convnext", "facebook/convnextv2-tiny-1k-224", "ConvNextForImageClassification", "ConvNextConfig",
        {"num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1]},
        {"crop_pct": 0.875, "do_normalize": True, "do_rescale": True, "do_resize": True,
         "image_mean": IMAGENET_MEAN, "image_processor_type": "ConvNextImageProcessor",
         "image_std": IMAGENET_STD, "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 32}},
    ),
    Arch(
        "resnet", "microsoft/resnet-50", "ResNetForImageClassification", "ResNetConfig",
        {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "bottleneck"},
        CROP_PCT_LEGACY,
    ),
    Arch(
        "regnet", "facebook/regnet-y-040", "RegNetForImageClassification", "RegNetConfig",
        {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "groups_width": 8,
         "layer_type": "y"},
        CROP_PCT_LEGACY,
    ),
    Arch(
        "mobilenet_v2", "google/mobilenet_v2_1.0_224", "MobileNetV2ForImageClassification",
        "MobileNetV2Config", {"image_size": 32, "depth_multiplier": 0.25, "min_depth": 4},
        {"crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_normalize": True,
         "do_resize": True, "image_mean": HALF, "image_processor_type": "MobileNetV2ImageProcessor",
         "image_std": HALF, "resample": 2, "size": {"shortest_edge": 37}},
    ),
    Arch(  # no normalisation, BGR channel order (288 -> 36, crop 256 -> 32)
        "mobilevit", "apple/mobilevit-small", "MobileViTForImageClassification", "MobileViTConfig",
        {"image_size": 32, "hidden_sizes": [8, 8, 8], "neck_hidden_sizes": [4, 4, 8, 8, 8, 8, 16],
         "num_attention_heads": 2},
        {"crop_size": 32, "do_center_crop": True, "do_flip_channel_order": True, "do_resize": True,
         "feature_extractor_type": "MobileViTFeatureExtractor", "resample": 2, "size": 36},
    ),
    Arch(
        "dinov2", "facebook/dinov2-small-imagenet1k-1-layer", "Dinov2ForImageClassification", "Dinov2Config",
        {"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
         "num_attention_heads": 2, "mlp_ratio": 2},
        {"crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_convert_rgb": True,
         "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": IMAGENET_MEAN,
         "image_processor_type": "BitImageProcessor", "image_std": IMAGENET_STD, "resample": 3,
         "rescale_factor": 1 / 255, "size": {"shortest_edge": 37}},
    ),
    Arch(  # do_center_crop false again (crop 289 -> 41 unused), nearest resampling, include_top
        "efficientnet", "google/efficientnet-b0", "EfficientNetForImageClassification", "EfficientNetConfig",
        {"image_size": 32, "width_coefficient": 0.25, "depth_coefficient": 0.25, "hidden_dim": 320},
        {"crop_size": {"height": 41, "width": 41}, "do_center_crop": False, "do_normalize": True,
         "do_rescale": True, "do_resize": True, "image_mean": IMAGENET_MEAN,
         "image_processor_type": "EfficientNetImageProcessor",
         "image_std": [0.47853944, 0.4732864, 0.47434163], "include_top": True, "resample": 0,
         "rescale_factor": 1 / 255, "rescale_offset": False, "size": {"height": 32, "width": 32}},
    ),
    Arch(  # multi-label (sigmoid by default), and a non-square input: 48 high, 32 wide
        "multilabel_vit", "a multi-label ViT fine-tune", "ViTForImageClassification", "ViTConfig",
        {"image_size": [48, 32], **TINY_VIT},
        {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": HALF,
         "image_processor_type": "ViTImageProcessor", "image_std": HALF, "resample": 2,
         "rescale_factor": 1 / 255, "size": {"height": 48, "width": 32}},
        problem_type="multi_label_classification",
    ),
]  # fmt: skip


def make_checkpoint(arch: Arch, folder: Path) -> Path:
    """Save ``arch`` as a seeded random checkpoint with its Hub-style preprocessor_config.json."""
    import torch
    import transformers

    labels = {i: f"{arch.name} label {i}" for i in range(NUM_LABELS)}
    config = getattr(transformers, arch.config_class)(
        **arch.config,
        num_labels=NUM_LABELS,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        problem_type=arch.problem_type,
        architectures=[arch.model_class],
    )
    torch.manual_seed(SEED)
    model = getattr(transformers, arch.model_class)(config)
    with torch.no_grad():
        # Like a trained model: batch norms hold their inputs' statistics (random init's defaults shrink
        # a deep mobile network's features to nothing), and a head with spread, so scores are distinct.
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_parameters()  # scale 1 (some inits leave it near 0), then statistics from data:
            norm.momentum = None  # a plain average over the calibration batch
        if norms:
            smooth = torch.nn.functional.interpolate(torch.randn(16, 3, 4, 4), size=32, mode="bilinear")
            model.train()(pixel_values=torch.cat([smooth, torch.randn(16, 3, 32, 32)]))  # photo-like, noise
        for name, parameter in model.named_parameters():
            if "classifier" in name:
                parameter.normal_(0.0, 2 / parameter.shape[-1] ** 0.5 if parameter.ndim == 2 else 0.1)
    model.eval()
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(arch.processor, indent=2) + "\n")
    return folder


# --- Fixtures: checkpoints, the pipeline's answers, bakes and servers -------------------------------------

FUNCTIONS = (None, "sigmoid", "softmax", "none")  # None: the model's default
CHOICES = [(spec.name, precision) for spec, precision in pairs()]
BY_NAME = {arch.name: arch for arch in ARCHES}
# (function_to_apply, top_k): None is the default (top_k 5 in both); over the number of labels is capped
REQUESTS = [(None, None), ("sigmoid", 3), ("softmax", NUM_LABELS + 4), ("none", NUM_LABELS)]


@dataclass
class Baked:
    """One ``python -m space bake --optimize BACKEND --precision PRECISION`` outcome."""

    folder: Path | None
    error: str | None


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared machine: one intra-op thread is several times faster than waiting on
    busy sibling threads for every small convolution (measured: a bake 1.0 s instead of 7 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photo(photos: list[Photo], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo as a lossless PNG: the server and the pipeline decode it to the same pixels (no JPEG
    draft decoding); it is also the bake's example, so the guard checks top-1 on it."""
    folder = tmp_path_factory.mktemp("photo")
    with Image.open(photos[0].path) as image:
        image.convert("RGB").save(folder / "photo.png")
    return folder / "photo.png"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("architectures")
    return {arch.name: make_checkpoint(arch, root / arch.name) for arch in ARCHES}


@pytest.fixture(scope="module")
def expected(checkpoints: dict[str, Path], photo: Path) -> dict[str, dict[str | None, list[dict[str, Any]]]]:
    """transformers' own image-classification pipeline on the photo: every label, for each function."""
    from transformers import pipeline

    answers = {}
    for name, folder in checkpoints.items():
        classify = pipeline("image-classification", model=str(folder))
        answers[name] = {
            function: classify(
                str(photo), top_k=NUM_LABELS, **({"function_to_apply": function} if function else {})
            )
            for function in FUNCTIONS
        }
    return answers


@pytest.fixture(scope="module")
def bake_once(
    checkpoints: dict[str, Path], photo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str, str], Baked]:
    """Bake each (architecture, backend, precision) once, as the bake command does, with the photo (static
    int8 on fewer calibration crops than the default and without accuracy control, whose ranking would
    compile each model dozens of times: these are tiny random models, and the guard still decides;
    test_openvino and test_no_torch run the accuracy control)."""
    root = tmp_path_factory.mktemp("bakes")
    done: dict[tuple[str, str, str], Baked] = {}

    def run(name: str, backend: str, precision: str) -> Baked:
        key = (name, backend, precision)
        if key not in done:
            output = root / "-".join(key)
            examples = {"examples_from": photo.parent, "examples_dir": root / f"examples-{name}"}
            try:
                bake(
                    str(checkpoints[name]),
                    output,
                    optimize=backend,
                    precision=precision,
                    calibration_size=TEST_CALIBRATION_SIZE,
                    float_groups=0,
                    **examples,
                )
                done[key] = Baked(output, None)
            except BakeError as error:
                assert not output.exists(), "a refused bake leaves nothing behind to be served"
                done[key] = Baked(None, str(error))
        return done[key]

    return run


@pytest.fixture(scope="module")
def servers(
    checkpoints: dict[str, Path],
    bake_once: Callable[[str, str, str], Baked],
    server_factory: Callable[..., Server],
) -> dict[str, Server]:
    """Real servers, started at once so that their start-ups overlap: the ViT as a plain folder (PyTorch)
    and as its ONNX Runtime fp32 bake (a non-PyTorch artifact must start), and the multi-label ViT with its
    page. Every architecture's answers are checked in process, through the same service the server runs."""
    baked = bake_once("vit", "onnxruntime", "fp32")
    assert baked.folder is not None, baked.error
    wanted = {
        "vit plain": checkpoints["vit"],
        "vit": baked.folder,
        "multilabel_vit plain": checkpoints["multilabel_vit"],
    }
    env = {"SPACE_THREADS": "1", "SPACE_TOP_K": "5"}  # 5: the pipeline's default top_k
    started = {key: server_factory(folder, env=env, wait_ready=False) for key, folder in wanted.items()}
    for server in started.values():  # killed with the module's other servers (conftest.ServerFactory)
        wait_until_ready(server, timeout=300)
    return started


def served(folder: Path) -> ClassificationService:
    """The serving code in-process (what ``serve`` runs behind HTTP), with SPACE_BACKEND=auto."""
    return loaded_service(folder, threads=1)


def input_size(folder: Path) -> tuple[int, int]:
    """The (height, width) the checkpoint's processor makes of a photo-sized landscape image."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    return tuple(
        processor(images=Image.new("RGB", (800, 600)), return_tensors="np")["pixel_values"].shape[-2:]
    )


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]], what: str) -> None:
    """Labels in the same order, scores equal to 1e-4."""
    assert [g["label"] for g in got] == [w["label"] for w in want], (what, got, want)
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-4, err_msg=what)


def ask_service(service: ClassificationService, photo: Path, name: str, expected: dict) -> None:
    """The service every front door calls, in process, for each function_to_apply: the pipeline's answer."""
    for function, top_k in REQUESTS:
        [got] = classify(service, [photo.read_bytes()], top_k=top_k, function_to_apply=function)
        want = expected[name][function][: min(top_k or 5, NUM_LABELS)]
        assert_same([{"label": g.label, "score": g.score} for g in got], want, f"{name} {function} {top_k}")


def ask_inference_client(url: str, photo: Path, name: str, expected: dict) -> None:
    """huggingface_hub's InferenceClient, unchanged, for each function_to_apply: the pipeline's answer."""
    client = InferenceClient(base_url=f"{url}/predict")
    for function, top_k in REQUESTS:
        got = client.image_classification(photo, function_to_apply=function, top_k=top_k)
        want = expected[name][function][: min(top_k or 5, NUM_LABELS)]
        assert_same([{"label": g.label, "score": g.score} for g in got], want, f"{name} {function} {top_k}")


# --- Plain folders: every architecture in process, the ViT over HTTP too -----------------------------------


@pytest.mark.parametrize("name", BY_NAME)
def test_plain_folder_is_served_like_the_pipeline(
    name: str, checkpoints: dict[str, Path], expected: dict, photo: Path
) -> None:
    service = served(checkpoints[name])
    try:
        ask_service(service, photo, name, expected)
        info = service.info.as_dict()
    finally:
        service.close()
    assert info["backend"] == "torch-fp32" and info["architecture"] == BY_NAME[name].model_class
    # The size the processor really makes, not a config field.
    assert tuple(info["image_size"]) == input_size(checkpoints[name]), info


def test_the_vit_and_its_bake_answer_over_http_like_the_pipeline(
    servers: dict[str, Server], expected: dict, photo: Path
) -> None:
    """huggingface_hub's InferenceClient against the real servers, the plain folder and its ONNX bake."""
    for key, backend in (("vit plain", "torch-fp32"), ("vit", "onnxruntime-fp32")):
        ask_inference_client(servers[key].url, photo, "vit", expected)
        with servers[key].client() as http:
            assert http.get("/info").json()["model"]["backend"] == backend


def test_multi_label_plain_folder_scores_independent_sigmoids_by_default(
    servers: dict[str, Server], expected: dict, photo: Path
) -> None:
    server = servers["multilabel_vit plain"]
    ask_inference_client(server.url, photo, "multilabel_vit", expected)
    with server.client() as http:
        info = http.get("/info").json()["model"]
        answer = http.post("/predict", content=photo.read_bytes(), params={"top_k": NUM_LABELS}).json()
    assert info["function_to_apply"] == "sigmoid" and info["backend"] == "torch-fp32"
    assert info["image_size"] == [48, 32]  # height, width: the non-square input
    assert_same(answer, expected["multilabel_vit"][None], "multi-label default")
    assert_same(answer, expected["multilabel_vit"]["sigmoid"], "multi-label sigmoid")
    assert abs(sum(item["score"] for item in answer) - 1) > 0.1  # not a softmax
    # The page (and the MCP tool, the same function) shows the same default scores.
    from gradio_client import Client, handle_file

    shown, _ = Client(server.url, verbose=False).predict(handle_file(str(photo)), 3, api_name="/classify")
    page = [{"label": c["label"], "score": c["confidence"]} for c in shown["confidences"]]
    assert_same(page, expected["multilabel_vit"][None][:3], "multi-label default on the page")


# --- Baked: every backend and precision in process (the ViT's ONNX bake over HTTP above) ----------------


@pytest.mark.parametrize("name", BY_NAME)
def test_baked_onnx_model_starts_and_answers_like_the_pipeline(
    name: str, bake_once: Callable[[str, str, str], Baked], expected: dict, photo: Path
) -> None:
    import onnx

    baked = bake_once(name, "onnxruntime", "fp32")
    assert baked.folder is not None, baked.error
    service = served(baked.folder)
    try:
        ask_service(service, photo, name, expected)
        info = service.info.as_dict()
    finally:
        service.close()
    assert info["backend"] == "onnxruntime-fp32" and info["optimized"]["guard"]["passed"]
    # Exported for the size the processor really produces (BEiT: 32x32, not its unused crop_size 224).
    graph = onnx.load(Path(info["path"]) / "model-fp32.onnx").graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][2:]
    assert tuple(info["image_size"]) == tuple(dims) == input_size(Path(info["path"]))


@pytest.mark.parametrize(("name", "backend", "precision"), [(n, *c) for n in BY_NAME for c in CHOICES])
def test_every_bake_serves_within_its_bound_or_is_refused_at_bake_time(
    name: str,
    backend: str,
    precision: str,
    bake_once: Callable[[str, str, str], Baked],
    expected: dict,
    photo: Path,
) -> None:
    baked = bake_once(name, backend, precision)
    if baked.folder is None and baked.error and "crashed running the model (SIG" in baked.error:
        # A runtime that crashes on this model (OpenVINO 2026.4 on static-int8 MobileNetV2) is refused
        # by the bake, which ran it in a child process: the bake itself survives and says so.
        assert precision != "fp32" and f"{backend} {precision} cannot serve" in baked.error, baked.error
        return
    if baked.folder is None:  # refused: only for drifting beyond the guard's bound, and saying by how much
        assert precision != "fp32" and baked.error is not None, baked.error
        found = re.search(
            r"min cosine ([\d.e-]+) \(bound ([\d.]+)\), top-1 agreement ([\d.]+|None)", baked.error
        )
        assert found and "beyond the bound" in baked.error, baked.error
        cosine, bound, top1 = found.groups()
        assert float(cosine) < float(bound) or top1 != "1.0", baked.error
        return
    manifest = json.loads((baked.folder / OPTIMIZED_MANIFEST).read_text())
    assert (manifest["backend"], manifest["precision"]) == (backend, precision) and manifest["guard"][
        "passed"
    ]
    assert manifest["guard"]["photos"] == 1
    service = served(baked.folder)
    try:
        assert service.info is not None and service.info.backend == f"{backend}-{precision}"
        got = {f: classify(service, [photo], top_k=NUM_LABELS, function_to_apply=f)[0] for f in FUNCTIONS}
    finally:
        service.close()
    what = f"{name} {backend}-{precision}"
    if precision == "fp32":
        for function in FUNCTIONS:
            answer = [{"label": p.label, "score": p.score} for p in got[function]]
            assert_same(answer, expected[name][function], f"{what} {function}")
        return
    # Quantised: within the guard's bound on the photo (top-1 kept, logits' cosine), served as baked.
    logits = {p.label: p.score for p in got["none"]}
    reference = {p["label"]: p["score"] for p in expected[name]["none"]}
    a, b = np.array([logits[k] for k in reference]), np.array(list(reference.values()))
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= MIN_COSINE, (what, logits, reference)
    assert got[None][0].label == expected[name][None][0]["label"], what


def test_a_checkpoint_onnx_cannot_serve_is_refused_at_bake_time_and_torch_serves_it(
    checkpoints: dict[str, Path], photo: Path, tmp_path: Path
) -> None:
    """A processor that keeps the aspect ratio makes inputs of many sizes; an exported graph takes one."""
    folder = tmp_path / "resnet-any-size"
    shutil.copytree(checkpoints["resnet"], folder)
    processor = {**CROP_PCT_LEGACY, "crop_pct": None, "do_center_crop": False, "size": {"shortest_edge": 32},
                 "feature_extractor_type": None, "image_processor_type": "BitImageProcessor"}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(BakeError) as refused:
        bake(str(folder), tmp_path / "onnx", optimize="onnxruntime", precision="fp32")
    message = str(refused.value)
    assert "onnxruntime fp32 cannot serve ResNetForImageClassification" in message
    assert "keeps the aspect ratio" in message and "--optimize torch" in message, message
    assert not (tmp_path / "onnx").exists()
    bake(str(folder), tmp_path / "torch", optimize="torch", precision="fp32")
    service = served(tmp_path / "torch")
    try:
        assert len(classify(service, [photo], top_k=3)[0]) == 3
    finally:
        service.close()
