"""``POST /explain`` and ``GET /labels`` over HTTP against the real server: the three upload forms, the
PNG overlay, targets, every mistake a 4xx, the bounds (own concurrency, admission, time limit) and
/metrics. The map's quality itself is tested in process (test_explain.py)."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from space.serving.explain import DEFAULT
from space.serving.overlay import SCALE_HEIGHT
from tests.conftest import Photo, Server


def photo(photos: list[Photo], name: str) -> Photo:
    return next(p for p in photos if p.path.name == name)


def check_map(body: dict[str, object], rows: int = 7) -> None:
    assert body["method"] == DEFAULT.name and body["rows"] == body["cols"] == rows
    assert "not where the object is" in body["reading"]  # type: ignore[operator]
    grid = body["grid"]
    assert isinstance(grid, list) and len(grid) == rows and all(len(row) == rows for row in grid)
    values = [v for row in grid for v in row]
    assert min(values) >= 0 and max(values) == 1.0
    assert 1 < body["forward_passes"] <= DEFAULT.passes(rows)  # type: ignore[operator]


def test_raw_bytes_explain_the_top_class(real_server: Server, photos: list[Photo]) -> None:
    zebra = photo(photos, "zebra.jpg")
    with real_server.client() as client:
        response = client.post(
            "/explain", content=zebra.path.read_bytes(), headers={"content-type": "image/jpeg"}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        top = client.post(
            "/predict", content=zebra.path.read_bytes(), headers={"content-type": "image/jpeg"}
        ).json()[0]
    check_map(body)
    assert body["label"] == top["label"] and body["label"] in zebra.accepted
    assert body["index"] == 340 and body["score"] == pytest.approx(top["score"], abs=0.05)


def test_base64_json_and_multipart_with_a_target(real_server: Server, photos: list[Photo]) -> None:
    cat = photo(photos, "cat_chelsea.png")
    encoded = base64.b64encode(cat.path.read_bytes()).decode()
    with real_server.client() as client:
        by_label = client.post("/explain", json={"inputs": encoded, "parameters": {"target": "tiger cat"}})
        by_index = client.post("/explain", json={"inputs": encoded, "parameters": {"target": 282}})
        by_query = client.post(
            "/explain",
            params={"target": "282"},
            files={"file": ("cat.png", cat.path.read_bytes(), "image/png")},
        )
    for response in (by_label, by_index, by_query):
        assert response.status_code == 200, response.text
        body = response.json()
        check_map(body)
        assert (body["label"], body["index"]) == ("tiger cat", 282)
    assert by_label.json()["grid"] == by_index.json()["grid"]  # the same image and class: the same map


def test_png_overlay_is_the_users_image_with_the_map(real_server: Server, photos: list[Photo]) -> None:
    lion = photo(photos, "lion.jpg")
    with real_server.client() as client:
        response = client.post(
            "/explain?format=png", content=lion.path.read_bytes(), headers={"content-type": "image/jpeg"}
        )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(response.content))
    original = Image.open(lion.path)
    # The photo, then a strip with the colour scale and what the map is (at least 320 px wide, to be read).
    width = max(original.width, 320)
    assert overlay.format == "PNG" and overlay.size == (width, original.height + SCALE_HEIGHT)
    picture = overlay.convert("RGB").crop((0, 0, *original.size))
    assert picture.tobytes() != original.convert("RGB").tobytes()


@pytest.mark.parametrize(
    ("params", "json_target", "status", "words"),
    [
        ({"target": "unicorn"}, None, 422, "GET /labels"),
        ({"target": "1000"}, None, 422, "0 to 999"),
        ({}, [1, 2], 422, "label (string) or a class index"),
        ({"format": "gif"}, None, 422, "format"),
    ],
)
def test_bad_targets_and_formats_are_422_with_what_to_do(
    real_server: Server,
    photos: list[Photo],
    params: dict[str, str],
    json_target: object,
    status: int,
    words: str,
) -> None:
    data = photos[0].path.read_bytes()
    with real_server.client() as client:
        if json_target is None:
            response = client.post(
                "/explain", params=params, content=data, headers={"content-type": "image/jpeg"}
            )
        else:
            payload = {"inputs": base64.b64encode(data).decode(), "parameters": {"target": json_target}}
            response = client.post("/explain", json=payload)
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.text


def test_bad_images_get_the_same_answers_as_predict(real_server: Server) -> None:
    with real_server.client() as client:
        for path in ("/explain", "/predict"):
            junk = client.post(path, content=b"not a picture" * 10, headers={"content-type": "image/jpeg"})
            assert junk.status_code == 400 and "not an image" in junk.json()["error"], junk.text
            xml = client.post(path, content=b"<x/>", headers={"content-type": "application/xml"})
            assert xml.status_code == 415, xml.text
            empty = client.post(path, json={"inputs": "@@@"})
            assert empty.status_code == 400 and "base64" in empty.json()["error"], empty.text


def test_labels_and_openapi(real_server: Server) -> None:
    with real_server.client() as client:
        labels = client.get("/labels").json()["labels"]
        schema = client.get("/openapi.json").json()
    assert len(labels) == 1000 and labels[340] == "zebra"
    operation = schema["paths"]["/explain"]["post"]
    assert {"target", "format"} <= {p["name"] for p in operation["parameters"]}
    assert {"image/*", "application/json", "multipart/form-data"} <= set(operation["requestBody"]["content"])
    assert "image/png" in operation["responses"]["200"]["content"]
    assert {"422", "503", "504"} <= set(operation["responses"])
    assert "/labels" in schema["paths"]


@pytest.fixture(scope="module")
def slow_server(server_factory: Callable[..., Server], real_model: Path) -> Server:
    """Explanations that take long (a 24 x 24 grid: 577 passes) and a short time limit."""
    return server_factory(
        real_model,
        env={"SPACE_EXPLAIN_GRID": "24", "SPACE_REQUEST_TIMEOUT_S": "6", "SPACE_MAX_IN_FLIGHT": "8"},
    )


def test_explanations_are_bounded_and_predict_is_not_starved(
    slow_server: Server, photos: list[Photo]
) -> None:
    """While one explanation runs: a second one is refused at once (503), a /predict is answered before
    the explanation ends, and past the time limit the explanation is answered 504; /metrics counts all."""
    data = photo(photos, "lion.jpg").path.read_bytes()
    headers = {"content-type": "image/jpeg"}
    first: dict[str, object] = {}

    def explain() -> None:
        with httpx.Client(base_url=slow_server.url, timeout=60) as client:
            response = client.post("/explain", content=data, headers=headers)
            first.update(status=response.status_code, body=response.json(), done=time.monotonic())

    runner = threading.Thread(target=explain)
    runner.start()
    time.sleep(1.5)  # the first explanation has started (its passes take well over the 6 s limit)
    with slow_server.client() as client:
        second = client.post("/explain", content=data, headers=headers)
        predicted = client.post("/predict", content=data, headers=headers)
        predicted_at = time.monotonic()
    runner.join()
    assert second.status_code == 503 and second.headers["retry-after"], second.text
    assert "retry" in second.json()["error"]
    assert predicted.status_code == 200 and predicted.json()[0]["label"].startswith("lion")
    assert predicted_at < first["done"]  # type: ignore[operator]
    assert first["status"] == 504 and "limit" in first["body"]["error"], first  # type: ignore[index]
    time.sleep(4)  # the abandoned explanation stops at its next chunk and frees its slots
    with slow_server.client() as client:
        again = client.post("/explain", content=data, headers=headers)
        assert again.status_code == 504, again.text  # admitted again (not 503): the slots were freed
        metrics = client.get("/metrics").text
    assert 'space_explanations_total{outcome="busy"} 1.0' in metrics, metrics
    assert 'space_explanations_total{outcome="timeout"} 2.0' in metrics, metrics
    assert "space_explanation_duration_seconds_bucket" in metrics


def test_explanations_are_counted_and_timed_in_metrics(real_server: Server, photos: list[Photo]) -> None:
    with real_server.client() as client:
        before = client.get("/metrics").text
        response = client.post(
            "/explain", content=photos[1].path.read_bytes(), headers={"content-type": "image/jpeg"}
        )
        mistake = client.post(
            "/explain?target=unicorn",
            content=photos[1].path.read_bytes(),
            headers={"content-type": "image/jpeg"},
        )
        after = client.get("/metrics").text
    passes = response.json()["forward_passes"]
    assert mistake.status_code == 422

    def value(text: str, name: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(name + " ")]
        return float(lines[0].split()[-1]) if lines else 0.0

    assert (
        value(after, 'space_explanations_total{outcome="ok"}')
        == value(before, 'space_explanations_total{outcome="ok"}') + 1
    )
    assert (
        value(after, "space_explanation_forward_passes_total")
        - value(before, "space_explanation_forward_passes_total")
        == passes
    )
    assert (
        value(after, 'space_explanations_total{outcome="error"}')
        == value(before, 'space_explanations_total{outcome="error"}') + 1
    )
    assert value(after, "space_explanation_duration_seconds_count") >= 1
    assert (
        value(after, "space_images_classified_total") - value(before, "space_images_classified_total")
        == passes
    )


def test_the_api_token_guards_explain_and_labels(
    server_factory: Callable[..., Server], tiny_vit: Path, photos: list[Photo]
) -> None:
    server = server_factory(tiny_vit, env={"SPACE_API_TOKEN": "explain-token-123"})
    data = photos[0].path.read_bytes()
    headers = {"content-type": "image/jpeg"}
    with server.client() as client:
        assert client.post("/explain", content=data, headers=headers).status_code == 401
        assert client.get("/labels").status_code == 401
        allowed = {**headers, "authorization": "Bearer explain-token-123"}
        assert client.post("/explain", content=data, headers=allowed).status_code == 200
        assert client.get("/labels", headers=allowed).json()["labels"][0] == "class 0"
