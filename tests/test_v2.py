"""The Open Inference Protocol (KServe v2) front door, driven by its real clients: NVIDIA's ``tritonclient``
(binary and JSON tensors, the classification extension) and KServe's ``InferenceRESTClient``, against the
real server with the real model. Each image's answer is ``/predict``'s for that image alone."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import Photo, Server

CHOSEN = ("zebra.jpg", "lion.jpg", "orange.jpg", "cat_chelsea.png")


@pytest.fixture(scope="module")
def model_name(real_server: Server, real_model: Path) -> str:
    name = real_server.client().get("/info").json()["name"]
    assert name == real_model.name  # the default: the last part of SPACE_MODEL
    return name


@pytest.fixture(scope="module")
def chosen(photos: list[Photo]) -> list[Photo]:
    return [p for p in photos if p.path.name in CHOSEN]


@pytest.fixture(scope="module")
def alone(real_server: Server, chosen: list[Photo]) -> list[list[dict]]:
    """``/predict`` of each image alone: its top 5 labels and scores."""
    with real_server.client() as http:
        return [http.post("/predict", content=p.path.read_bytes()).json() for p in chosen]


@pytest.fixture(scope="module")
def labels(real_server: Server) -> list[str]:
    return real_server.client().get("/labels").json()["labels"]


def client(server: Server, **kwargs: object) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), **kwargs)


def images(photos: list[Photo], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(photos)], "BYTES")
    files = [p.path.read_bytes() for p in photos]
    if binary:
        tensor.set_data_from_numpy(np.array(files, dtype=object))
    else:  # JSON: each file in base64 (tritonclient sends BYTES elements as strings)
        tensor.set_data_from_numpy(
            np.array([base64.b64encode(f) for f in files], dtype=object), binary_data=False
        )
    return tensor


def assert_matches(scores: np.ndarray, alone: list[list[dict]], labels: list[str]) -> None:
    """Each row's best classes are /predict's for that image alone, with its scores."""
    assert scores.shape == (len(alone), len(labels)) and scores.dtype == np.float32
    for row, answer in zip(scores, alone, strict=True):
        top = np.argsort(-row, kind="stable")[: len(answer)]
        assert [labels[i] for i in top] == [a["label"] for a in answer]
        np.testing.assert_allclose(row[top], [a["score"] for a in answer], atol=1e-5)
        assert row.sum() == pytest.approx(1.0, abs=1e-3)  # the model's default: softmax


def test_health_and_metadata(real_server: Server, model_name: str) -> None:
    tc = client(real_server)
    assert tc.is_server_live() and tc.is_server_ready() and tc.is_model_ready(model_name)
    assert not tc.is_model_ready("no-such-model")
    assert {"binary_tensor_data", "classification"} <= set(tc.get_server_metadata()["extensions"])
    metadata = tc.get_model_metadata(model_name)
    assert metadata["name"] == model_name and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [-1, 1000]}]
    assert tc.get_model_metadata(model_name, model_version="1") == metadata
    with pytest.raises(InferenceServerException) as unknown:
        tc.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404" and model_name in unknown.value.message()


def test_binary_tensors_give_each_image_its_predict_answer(
    real_server: Server, model_name: str, chosen: list[Photo], alone: list, labels: list[str]
) -> None:
    result = client(real_server).infer(model_name, [images(chosen)], request_id="batch-1")
    assert result.get_response()["id"] == "batch-1"
    assert result.get_response()["model_name"] == model_name
    assert_matches(result.as_numpy("scores"), alone, labels)


def test_json_tensors_give_the_same_scores(
    real_server: Server, model_name: str, chosen: list[Photo], alone: list, labels: list[str]
) -> None:
    asked = [triton.InferRequestedOutput("scores", binary_data=False)]
    result = client(real_server).infer(model_name, [images(chosen, binary=False)], outputs=asked)
    assert_matches(result.as_numpy("scores"), alone, labels)


def test_classification_extension_answers_score_index_label(
    real_server: Server, model_name: str, chosen: list[Photo], alone: list, labels: list[str]
) -> None:
    asked = [triton.InferRequestedOutput("scores", class_count=3)]
    classes = client(real_server).infer(model_name, [images(chosen)], outputs=asked).as_numpy("scores")
    assert classes.shape == (len(chosen), 3)
    for row, answer in zip(classes, alone, strict=True):
        parts = [item.decode().split(":", 2) for item in row]
        assert [label for _, _, label in parts] == [a["label"] for a in answer[:3]]
        assert [labels[int(index)] for _, index, _ in parts] == [a["label"] for a in answer[:3]]
        np.testing.assert_allclose(
            [float(s) for s, _, _ in parts], [a["score"] for a in answer[:3]], atol=1e-5
        )
        assert all(len(s.split(".")[1]) == 6 for s, _, _ in parts)  # Triton's "%f"


def test_function_to_apply_is_a_request_parameter(
    real_server: Server, model_name: str, chosen: list[Photo]
) -> None:
    tc = client(real_server)
    logits = tc.infer(model_name, [images(chosen[:1])], parameters={"function_to_apply": "none"})
    values = logits.as_numpy("scores")[0]
    assert values.min() < 0 or values.max() > 1  # raw logits
    softmax = np.exp(values - values.max()) / np.exp(values - values.max()).sum()
    default = tc.infer(model_name, [images(chosen[:1])]).as_numpy("scores")[0]
    np.testing.assert_allclose(default, softmax, atol=1e-5)
    with pytest.raises(InferenceServerException) as bad:
        tc.infer(model_name, [images(chosen[:1])], parameters={"function_to_apply": "relu"})
    assert bad.value.status() == "422" and "sigmoid, softmax, none" in bad.value.message()


def test_kserve_rest_client(
    real_server: Server, model_name: str, chosen: list[Photo], alone: list, labels: list[str]
) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    files = [p.path.read_bytes() for p in chosen]

    async def scenario() -> tuple:
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as kserve:
            url = real_server.url
            health = (
                await kserve.is_server_live(url),
                await kserve.is_server_ready(url),
                await kserve.is_model_ready(url, model_name),
                await kserve.is_model_ready(url, "no-such-model"),
            )
            binary = InferInput("image", [len(files)], "BYTES")
            binary.set_data_from_numpy(np.array(files, dtype=object), binary_data=True)
            asked = [RequestedOutput("scores", {"classification": 2})]
            request = InferRequest(model_name, [binary], request_outputs=asked)
            classes = await kserve.infer(url, request, model_name=model_name)
            encoded = [base64.b64encode(f).decode() for f in files]
            as_json = InferInput("image", [len(files)], "BYTES", data=encoded)
            scores = await kserve.infer(url, InferRequest(model_name, [as_json]), model_name=model_name)
            return health, classes, scores

    health, classes, scores = asyncio.run(scenario())
    assert health == (True, True, True, False)
    tops = classes.get_output_by_name("scores").as_numpy()
    assert [[item.split(":", 2)[2] for item in row] for row in tops] == [
        [a["label"] for a in x[:2]] for x in alone
    ]
    assert_matches(scores.get_output_by_name("scores").as_numpy().astype(np.float32), alone, labels)


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ("unknown model", "404", "is not served here"),
        ("bad image", "400", "Image 1 (counting from 0)"),
        ("input name", "400", "one input named 'image'"),
        ("datatype", "400", "must be BYTES"),
        ("output name", "400", "one output, 'scores'"),
    ],
)
def test_mistakes_get_a_4xx_error_and_the_server_keeps_serving(
    real_server: Server, model_name: str, chosen: list[Photo], change: str, status: str, words: str
) -> None:
    tc = client(real_server)
    name, outputs = model_name, None
    tensor = images(chosen[:2])
    if change == "unknown model":
        name = "no-such-model"
    elif change == "bad image":
        tensor.set_data_from_numpy(np.array([chosen[0].path.read_bytes(), b"not an image"], dtype=object))
    elif change == "input name":
        tensor = triton.InferInput("pixels", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
    elif change == "datatype":
        tensor = triton.InferInput("image", [1, 3], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    else:
        outputs = [triton.InferRequestedOutput("probabilities")]
    with pytest.raises(InferenceServerException) as refused:
        tc.infer(name, [tensor], outputs=outputs)
    assert refused.value.status() == status and words in refused.value.message(), refused.value
    assert tc.infer(model_name, [images(chosen[:1])]).as_numpy("scores").shape == (1, 1000)


def test_the_token_guards_v2_but_not_its_health(server_factory, tiny_vit: Path, photos: list[Photo]) -> None:
    server = server_factory(tiny_vit, env={"SPACE_API_TOKEN": "v2-secret", "SPACE_MODEL_NAME": "tiny"})
    with server.client() as http:
        assert http.get("/v2/health/live").json() == {"live": True}
        assert http.get("/v2/health/ready").json() == {"ready": True}
        for path in ("/v2", "/v2/models/tiny", "/v2/models/tiny/ready"):
            assert http.get(path).status_code == 401, path
        assert http.post("/v2/models/tiny/infer", json={"inputs": []}).status_code == 401
    with pytest.raises(InferenceServerException) as refused:
        client(server).infer("tiny", [images(photos[:1])])
    assert refused.value.status() == "401"
    allowed = client(server).infer(
        "tiny", [images(photos[:2])], headers={"Authorization": "Bearer v2-secret"}
    )
    assert allowed.as_numpy("scores").shape == (2, 10)
