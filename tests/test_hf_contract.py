"""The Hugging Face image-classification contract beyond the basics: ``function_to_apply`` with the
pipeline's semantics, ``inputs`` as a data: URI, and URLs refused (the server never fetches).

Against the real server with the tiny ViT (a plain folder served by PyTorch), compared with
``transformers.pipeline("image-classification")`` on the same checkpoint and photo.
"""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient
from PIL import Image

from tests.conftest import Photo, Server

FUNCTIONS = ("sigmoid", "softmax", "none")
LABELS = 10  # the tiny ViT's classes


@pytest.fixture(scope="module")
def photo(photos: list[Photo], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photo as PNG: server and pipeline decode the same pixels (no JPEG draft decoding)."""
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    with Image.open(photos[0].path) as image:
        image.convert("RGB").save(path)
    return path


@pytest.fixture(scope="module")
def pipeline_answers(tiny_vit: Path, photo: Path) -> dict[str | None, list[dict[str, Any]]]:
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(tiny_vit))
    answers: dict[str | None, list[dict[str, Any]]] = {None: classify(str(photo), top_k=LABELS)}
    for function in FUNCTIONS:
        answers[function] = classify(str(photo), top_k=LABELS, function_to_apply=function)
    return answers


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want], (got, want)
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-4)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict_json(server: Server, inputs: str, **parameters: object) -> httpx.Response:
    with server.client() as http:
        return http.post("/predict", json={"inputs": inputs, "parameters": parameters})


def test_inference_client_gets_the_pipelines_scores_for_each_function(
    vit_server: Server, photo: Path, pipeline_answers: dict
) -> None:
    client = InferenceClient(base_url=f"{vit_server.url}/predict")
    for function in FUNCTIONS:
        got = client.image_classification(photo, function_to_apply=function, top_k=4)
        assert_same([{"label": g.label, "score": g.score} for g in got], pipeline_answers[function][:4])
    default = client.image_classification(photo)  # raw bytes, SPACE_TOP_K=3 here, the model's softmax
    assert_same([{"label": g.label, "score": g.score} for g in default], pipeline_answers[None][:3])
    none = pipeline_answers["none"]
    assert any(item["score"] < 0 for item in none) or any(item["score"] > 1 for item in none)  # raw logits


def test_function_to_apply_as_query_parameter_in_any_case(
    vit_server: Server, photo: Path, pipeline_answers: dict
) -> None:
    with vit_server.client() as http:
        for function in FUNCTIONS:
            for spelled in (function, function.upper()):
                params = {"function_to_apply": spelled, "top_k": LABELS}
                response = http.post("/predict", content=photo.read_bytes(), params=params)
                assert response.status_code == 200, response.text
                assert_same(response.json(), pipeline_answers[function])
        # The query string wins over the body's parameters, as top_k does.
        body = {"inputs": b64(photo.read_bytes()), "parameters": {"function_to_apply": "none", "top_k": 2}}
        response = http.post("/predict", json=body, params={"function_to_apply": "sigmoid"})
        assert_same(response.json(), pipeline_answers["sigmoid"][:2])


@pytest.mark.parametrize("value", ["default", "relu", "", 1, ["softmax"]])
def test_an_unknown_function_is_a_422_naming_the_three(
    vit_server: Server, photo: Path, value: object
) -> None:
    responses = [predict_json(vit_server, b64(photo.read_bytes()), function_to_apply=value)]
    if isinstance(value, str):
        with vit_server.client() as http:
            responses.append(
                http.post("/predict", content=photo.read_bytes(), params={"function_to_apply": value})
            )
    for response in responses:
        assert response.status_code == 422, response.text
        message = response.json()["error"]
        assert "function_to_apply" in message and "sigmoid, softmax, none" in message, message


def test_data_uris_and_wrapped_base64_give_the_raw_answer(vit_server: Server, photo: Path) -> None:
    data = photo.read_bytes()
    with vit_server.client() as http:
        raw = http.post("/predict", content=data, headers={"content-type": "image/png"}).json()
    encoded = b64(data)
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # `base64` without -w0
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    for inputs in (
        f"data:image/png;base64,{encoded}",
        f"DATA:image/png;name=photo.png;BASE64,{encoded}",
        f"data:;base64,{encoded}",
        wrapped,
        urlsafe,
    ):
        response = predict_json(vit_server, inputs)
        assert response.status_code == 200, (inputs[:40], response.text)
        assert response.json() == raw


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ("data:image/png,%89PNG%0D%0A", "not base64-encoded"),
        ("data:image/png;base64", "without a comma"),
        ("data:image/png;base64,@@@@", "not valid base64"),
    ],
)
def test_a_bad_data_uri_is_a_400_that_says_what_to_send(vit_server: Server, inputs: str, words: str) -> None:
    response = predict_json(vit_server, inputs)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert words in message and "base64" in message, message


@pytest.mark.parametrize(
    "scheme", ["http://{host}/cat.png", "https://{host}/cat.png", " HTTP://{host}/x", "file:///etc/passwd"]
)
def test_urls_are_refused_and_never_fetched(vit_server: Server, scheme: str) -> None:
    with socket.socket() as listener:  # a server the URL points at: it must never be called
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        url = scheme.format(host=f"127.0.0.1:{listener.getsockname()[1]}")
        response = predict_json(vit_server, url)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert response.status_code == 422, response.text
    message = response.json()["error"]
    assert "never fetches URLs" in message and "base64" in message and "multipart" in message, message


def test_openapi_documents_function_to_apply(vit_server: Server) -> None:
    with vit_server.client() as http:
        operation = http.get("/openapi.json").json()["paths"]["/predict"]["post"]
    [query] = [p for p in operation["parameters"] if p["name"] == "function_to_apply"]
    assert query["in"] == "query" and query["schema"]["enum"] == list(FUNCTIONS), query
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    parameters = body["properties"]["parameters"]["properties"]
    assert parameters["function_to_apply"]["enum"] == list(FUNCTIONS)
    assert "data:" in body["properties"]["inputs"]["description"]
