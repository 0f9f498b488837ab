"""The HTTP API, driven with real clients against the real server on a loopback port."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from huggingface_hub import InferenceClient
from PIL import Image

from tests.conftest import Photo, Server


def labels(result: list[dict[str, object]]) -> list[object]:
    return [item["label"] for item in result]


def jpeg(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **params)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def post_image(
    server: Server, data: bytes, content_type: str = "image/jpeg", **params: object
) -> httpx.Response:
    with server.client() as client:
        return client.post("/predict", content=data, headers={"content-type": content_type}, params=params)


def test_every_real_photo_is_classified_correctly(real_server: Server, photos: list[Photo]) -> None:
    assert len(photos) >= 10
    wrong = []
    with real_server.client() as client:
        for photo in photos:
            response = client.post(
                "/predict", content=photo.path.read_bytes(), headers={"content-type": "image/*"}
            )
            assert response.status_code == 200, response.text
            top = response.json()[0]["label"]
            if top not in photo.accepted:
                wrong.append((photo.path.name, top, photo.accepted))
    assert not wrong


def test_response_is_sorted_probabilities_of_default_length(real_server: Server, photos: list[Photo]) -> None:
    result = post_image(real_server, photos[0].path.read_bytes()).json()
    scores = [item["score"] for item in result]
    assert len(result) == 5
    assert scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores) and sum(scores) <= 1 + 1e-6
    assert set(result[0]) == {"label", "score"}


def test_raw_base64_json_and_multipart_give_the_same_answer(real_server: Server, photos: list[Photo]) -> None:
    data = photos[1].path.read_bytes()
    with real_server.client() as client:
        raw = client.post("/predict", content=data, headers={"content-type": "application/octet-stream"})
        as_json = client.post(
            "/predict", json={"inputs": base64.b64encode(data).decode(), "parameters": {"top_k": 3}}
        )
        data_url = client.post(
            "/predict", json={"inputs": "data:image/jpeg;base64," + base64.b64encode(data).decode()}
        )
        form = client.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")}, params={"top_k": 3})
    for response in (raw, as_json, data_url, form):
        assert response.status_code == 200, response.text
    assert raw.json()[:3] == as_json.json() == form.json() == data_url.json()[:3]


def test_top_k_from_query_and_parameters(real_server: Server, photos: list[Photo]) -> None:
    data = photos[2].path.read_bytes()
    assert len(post_image(real_server, data, top_k=1).json()) == 1
    assert len(post_image(real_server, data, top_k=1000).json()) == 1000
    with real_server.client() as client:
        payload = {"inputs": base64.b64encode(data).decode(), "parameters": {"top_k": 2}}
        assert len(client.post("/predict", json=payload).json()) == 2


def test_huggingface_inference_client_works_unchanged(real_server: Server, photos: list[Photo]) -> None:
    client = InferenceClient(model=f"{real_server.url}/predict")
    lion = next(p for p in photos if p.path.name == "lion.jpg")
    result = client.image_classification(str(lion.path))
    assert result[0].label in lion.accepted and 0 < result[0].score <= 1
    assert len(client.image_classification(lion.path.read_bytes(), top_k=2)) == 2


def test_gradio_client_calls_the_ui_function(real_server: Server, photos: list[Photo]) -> None:
    zebra = next(p for p in photos if p.path.name == "zebra.jpg")
    client = Client(real_server.url, verbose=False)
    label, timing = client.predict(handle_file(str(zebra.path)), 3, api_name="/classify")
    assert label["label"] in zebra.accepted
    assert len(label["confidences"]) == 3
    assert "ms" in timing


def _bomb() -> bytes:
    return png(Image.new("L", (10_000, 10_000)))


def _truncated_jpeg() -> bytes:
    data = jpeg(Image.new("RGB", (256, 256), (10, 200, 30)))
    return data[: len(data) // 2]


BAD_REQUESTS = {
    "empty body": (dict(content=b"", headers={"content-type": "image/jpeg"}), 400, "empty"),
    "text": (dict(content=b"just some text", headers={"content-type": "image/png"}), 400, "not an image"),
    "truncated jpeg": (
        dict(content=_truncated_jpeg(), headers={"content-type": "image/jpeg"}),
        400,
        "truncated",
    ),
    "png header + garbage": (
        dict(content=b"\x89PNG\r\n\x1a\n" + b"garbage" * 50, headers={"content-type": "image/png"}),
        400,
        "image",
    ),
    "decompression bomb": (dict(content=_bomb(), headers={"content-type": "image/png"}), 413, "pixels"),
    "over the byte limit": (
        dict(content=b"\xff\xd8" + b"\x00" * (11 * 1024 * 1024), headers={"content-type": "image/jpeg"}),
        413,
        "MB",
    ),
    "wrong content type": (dict(content=b"{}", headers={"content-type": "text/html"}), 415, "not accepted"),
    "json without inputs": (dict(json={"image": "x"}), 422, "inputs"),
    "json with bad base64": (dict(json={"inputs": "not base64!!"}), 400, "base64"),
    "invalid json": (dict(content=b"{oops", headers={"content-type": "application/json"}), 400, "JSON"),
    "multipart without file": (dict(data={"x": "1"}, files={"other": ("a.txt", b"", "text/plain")}), 400, ""),
}
BAD_TOP_K = ["0", "-1", "abc", "1.5"]


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_request_gets_its_4xx_and_message_then_the_server_still_serves(
    real_server: Server, photos: list[Photo], name: str
) -> None:
    kwargs, status, words = BAD_REQUESTS[name]
    with real_server.client() as client:
        response = client.post("/predict", **kwargs)
        assert response.status_code == status, response.text
        message = response.json()["error"]
        assert words.lower() in message.lower() and len(message) > 20
        good = client.post(
            "/predict", content=photos[0].path.read_bytes(), headers={"content-type": "image/jpeg"}
        )
        assert good.status_code == 200


@pytest.mark.parametrize("top_k", BAD_TOP_K)
def test_bad_top_k_is_a_422_naming_the_range(real_server: Server, photos: list[Photo], top_k: str) -> None:
    response = post_image(real_server, photos[0].path.read_bytes(), top_k=top_k)
    assert response.status_code == 422
    assert "top_k" in response.json()["error"]
    with real_server.client() as client:
        payload = {
            "inputs": base64.b64encode(photos[0].path.read_bytes()).decode(),
            "parameters": {"top_k": top_k},
        }
        assert client.post("/predict", json=payload).status_code == 422
    assert post_image(real_server, photos[0].path.read_bytes()).status_code == 200


def test_odd_modes_classify_like_their_plain_rgb_equivalents(
    real_server: Server, photos: list[Photo]
) -> None:
    """Transparent PNG, EXIF-rotated JPEG, CMYK and 16-bit images, each against its RGB equivalent."""
    photo = Image.open(next(p for p in photos if p.path.name == "zebra.jpg").path).convert("RGB")
    pixels = np.asarray(photo)

    rgba = photo.convert("RGBA")
    alpha = np.full(pixels.shape[:2], 255, np.uint8)
    alpha[:, : pixels.shape[1] // 8] = 0  # a transparent strip shows as white
    rgba.putalpha(Image.fromarray(alpha))
    on_white = pixels.copy()
    on_white[:, : pixels.shape[1] // 8] = 255

    exif = Image.Exif()
    exif[0x0112] = 6
    gray16 = (np.asarray(photo.convert("L"), np.uint16) * 257).astype(np.uint16)

    pairs = {
        "transparent png": (png(rgba), png(Image.fromarray(on_white))),
        "exif-rotated jpeg": (jpeg(photo.transpose(Image.Transpose.ROTATE_90), exif=exif), jpeg(photo)),
        "cmyk jpeg": (jpeg(photo.convert("CMYK")), jpeg(photo)),
        "16-bit png": (png(Image.fromarray(gray16)), png(photo.convert("L"))),
    }
    for name, (odd, plain) in pairs.items():
        odd_result = post_image(real_server, odd, "image/*").json()
        plain_result = post_image(real_server, plain, "image/*").json()
        assert odd_result[0]["label"] == plain_result[0]["label"], name
        assert abs(odd_result[0]["score"] - plain_result[0]["score"]) < 0.05, name


def test_health_readiness_info_and_docs(real_server: Server, real_model: Path) -> None:
    with real_server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        info = client.get("/info").json()
        assert info["model"]["model"] == str(real_model)
        assert info["model"]["num_labels"] == 1000
        assert {"torch", "transformers", "python"} <= set(info["model"]["versions"])
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        assert {"/predict", "/healthz", "/readyz", "/info"} <= set(spec["paths"])


def test_readyz_is_503_until_the_model_is_loaded(server_factory, real_model: Path) -> None:
    server = server_factory(real_model, wait_ready=False)
    codes: list[int] = []
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not codes or codes[-1] != 200):
        try:
            health = httpx.get(f"{server.url}/healthz", timeout=2)
            assert health.status_code == 200
            codes.append(httpx.get(f"{server.url}/readyz", timeout=2).status_code)
            if codes[-1] == 503:
                early = httpx.post(f"{server.url}/predict", content=b"x", timeout=5)
                assert early.status_code in (503, 400)  # 400 only if it became ready in between
        except httpx.TransportError:
            time.sleep(0.05)
    assert codes and codes[0] == 503 and codes[-1] == 200, codes
    server.stop()


def test_tiny_vit_serves_the_vit_path(vit_server: Server, photos: list[Photo]) -> None:
    result = post_image(vit_server, photos[0].path.read_bytes()).json()
    assert len(result) == 3  # SPACE_TOP_K=3
    assert all(item["label"].startswith("class ") for item in result)
    assert len(post_image(vit_server, photos[0].path.read_bytes(), top_k=10).json()) == 10
    # More than the model has returns them all, as transformers' pipeline does.
    assert len(post_image(vit_server, photos[0].path.read_bytes(), top_k=100000).json()) == 10
    with vit_server.client() as client:
        assert client.get("/info").json()["model"]["architecture"] == "ViTForImageClassification"
