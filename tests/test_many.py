"""Several images per request on the HF contract (a JSON list of images, several multipart files), and the
limits that hold per image on every front door: the most images per request (413), admission slots
counted in images (a request that does not fit is refused whole, 503 + Retry-After, before its images are
read where the request says how many come first), the byte limit on the whole body, and a bad image that
is named by its index while the server keeps serving."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Photo, Server
from tests.test_shed import read_response_head

CHOSEN = ("zebra.jpg", "lion.jpg", "orange.jpg", "cat_chelsea.png", "frog.jpg")


@pytest.fixture(scope="module")
def chosen(photos: list[Photo]) -> list[Photo]:
    return [p for p in photos if p.path.name in CHOSEN]


def b64(photo: Photo) -> str:
    return base64.b64encode(photo.path.read_bytes()).decode()


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


def test_a_json_list_answers_a_list_each_as_predict_alone(real_server: Server, chosen: list[Photo]) -> None:
    with real_server.client() as http:
        alone = [http.post("/predict?top_k=3", content=p.path.read_bytes()).json() for p in chosen]
        listed = http.post("/predict", json={"inputs": [b64(p) for p in chosen], "parameters": {"top_k": 3}})
        assert listed.status_code == 200, listed.text
        answers = listed.json()
        assert len(answers) == len(chosen)
        for got, want, photo in zip(answers, alone, chosen, strict=True):
            assert_same(got, want)
            assert got[0]["label"] in photo.accepted
        # A list of one is a list of one answer, as transformers' pipeline returns for a list.
        one = http.post("/predict", json={"inputs": [b64(chosen[0])], "parameters": {"top_k": 3}}).json()
        assert len(one) == 1
        assert_same(one[0], answers[0])  # within float rounding: batches of other sizes sum in other orders
        # One image, not in a list: today's answer, unchanged.
        single = http.post("/predict", json={"inputs": b64(chosen[0]), "parameters": {"top_k": 3}}).json()
        assert_same(single, one[0])


def test_several_multipart_files_answer_a_list(real_server: Server, chosen: list[Photo]) -> None:
    with real_server.client() as http:
        alone = [http.post("/predict", content=p.path.read_bytes()).json() for p in chosen]
        files = [("file", (p.path.name, p.path.read_bytes())) for p in chosen]
        answers = http.post("/predict", files=files).json()
        assert len(answers) == len(chosen)
        for got, want in zip(answers, alone, strict=True):
            assert_same(got, want)
        single = http.post("/predict", files=[files[0]]).json()  # one file: the plain answer
        assert_same(single, alone[0])


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_a_bad_image_in_a_list_is_named_by_its_index(
    real_server: Server, chosen: list[Photo], form: str
) -> None:
    with real_server.client() as http:
        if form == "json":
            inputs = [b64(chosen[0]), b64(chosen[1]), base64.b64encode(b"not an image").decode()]
            response = http.post("/predict", json={"inputs": inputs})
        else:
            files = [("file", ("a.jpg", chosen[0].path.read_bytes())), ("file", ("b.jpg", b"not an image"))]
            response = http.post("/predict", files=files)
        assert response.status_code == 400, response.text
        message = response.json()["error"]
        assert message.startswith(f"Image {2 if form == 'json' else 1} (counting from 0): "), message
        assert "not an image this server can read" in message
        bad_base64 = http.post("/predict", json={"inputs": [b64(chosen[0]), "@@@"]})
        assert bad_base64.status_code == 400 and "Image 1" in bad_base64.json()["error"]
        assert http.post("/predict", json={"inputs": []}).status_code == 422  # an empty list: nothing to do
        assert http.post("/predict", content=chosen[0].path.read_bytes()).status_code == 200


# --- Limits, per image --------------------------------------------------------------------------------------

LIMIT = 4  # SPACE_MAX_IN_FLIGHT here; the most images per request follows it down by default


@pytest.fixture(scope="module")
def limited(server_factory: Callable[..., Server], tiny_vit: Path) -> Server:
    env = {"SPACE_MAX_IN_FLIGHT": str(LIMIT), "SPACE_BODY_TIMEOUT_S": "30", "SPACE_MAX_UPLOAD_MB": "0.3"}
    return server_factory(tiny_vit, env={**env, "SPACE_MODEL_NAME": "tiny"})


def test_more_images_than_allowed_is_a_413_on_every_door(limited: Server, photos: list[Photo]) -> None:
    small = [p for p in photos if p.path.stat().st_size < 60_000][: LIMIT + 1]
    with limited.client() as http:
        assert http.get("/info").json()["settings"]["max_images_per_request"] == LIMIT
        answers = [
            http.post("/predict", json={"inputs": [b64(p) for p in small]}),
            http.post("/predict", files=[("file", (p.path.name, p.path.read_bytes())) for p in small]),
            http.post("/v2/models/tiny/infer", json=v2_json(small)),
        ]
        for response in answers:
            assert response.status_code == 413, response.text
            assert "SPACE_MAX_IMAGES_PER_REQUEST" in response.json()["error"], response.text
        assert http.post("/predict", json={"inputs": [b64(p) for p in small[:LIMIT]]}).status_code == 200


def test_the_byte_limit_holds_for_the_whole_body(limited: Server, photos: list[Photo]) -> None:
    """0.3 MB per request: each image is under it, three together are not."""
    sizable = sorted(
        (p for p in photos if p.path.stat().st_size < 200_000), key=lambda p: -p.path.stat().st_size
    )[:3]
    assert sum(p.path.stat().st_size for p in sizable) > 0.3 * 1024 * 1024
    with limited.client() as http:
        response = http.post(
            "/predict", files=[("file", (p.path.name, p.path.read_bytes())) for p in sizable]
        )
        assert response.status_code == 413 and "fewer images" in response.json()["error"], response.text
        assert http.post("/predict", content=sizable[0].path.read_bytes()).status_code == 200


def v2_json(photos: list[Photo]) -> dict:
    return {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [len(photos)], "data": [b64(p) for p in photos]}
        ]
    }


def stalled(url: str, path: str = "/predict") -> socket.socket:
    """A POST whose headers promise a body that never comes: admitted, it holds one slot."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        "Content-Length: 100000\r\n\r\n".encode()
    )
    return sock


@pytest.fixture
def two_slots_held(limited: Server) -> Iterator[None]:
    holders = [stalled(limited.url) for _ in range(2)]
    time.sleep(0.5)
    yield
    for holder in holders:
        holder.close()
    time.sleep(0.5)


def test_a_request_that_does_not_fit_is_refused_whole(
    limited: Server, photos: list[Photo], two_slots_held: None
) -> None:
    """Two of four slots held: three images are refused (503, Retry-After), two fit exactly."""
    small = [p for p in photos if p.path.stat().st_size < 60_000]
    with limited.client() as http:
        refused = http.post("/predict", json={"inputs": [b64(p) for p in small[:3]]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
        assert "busy" in refused.json()["error"]
        admitted = http.post("/predict", json={"inputs": [b64(p) for p in small[:2]]})
        assert admitted.status_code == 200 and len(admitted.json()) == 2


def test_a_binary_v2_request_is_refused_before_its_images_are_read(
    limited: Server, photos: list[Photo], two_slots_held: None
) -> None:
    """The JSON header says three images come: refused (503) while the images have not been sent at all."""
    files = [p.path.read_bytes() for p in photos if p.path.stat().st_size < 60_000][:3]
    blob = b"".join(len(f).to_bytes(4, "little") + f for f in files)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [3],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    host, port = limited.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: {host}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n"
            f"Content-Length: {len(header) + len(blob)}\r\n\r\n".encode()
            + header
        )
        head, _ = read_response_head(sock)  # answered with the images still unsent
    head = head.lower()
    assert head.startswith("http/1.1 503") and "retry-after: 1" in head and "connection: close" in head, head
    with limited.client() as http:  # two images fit in the two free slots
        headers = {"Inference-Header-Content-Length": str(len(header))}
        two = json.loads(header)
        two["inputs"][0]["shape"] = [2]
        two_blob = b"".join(len(f).to_bytes(4, "little") + f for f in files[:2])
        two["inputs"][0]["parameters"]["binary_data_size"] = len(two_blob)
        encoded = json.dumps(two).encode()
        headers["Inference-Header-Content-Length"] = str(len(encoded))
        response = http.post("/v2/models/tiny/infer", content=encoded + two_blob, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["shape"] == [2, 10]
