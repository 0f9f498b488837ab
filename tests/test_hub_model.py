"""The real google/vit-base-patch16-224, baked at the Dockerfile's pinned revision, on the committed photos.

The Hub is unreachable on the development machines and in .ci/run, so this runs where a bake of it
exists: the GitHub workflow's ``hub-model`` job bakes it (``--optimize auto``, as the image does) and
names the folder in ``HUB_MODEL_DIR``. Elsewhere it is reported as skipped, with that reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Photo, Server

HUB_MODEL_DIR = os.environ.get("HUB_MODEL_DIR", "")
PINNED = "3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3"  # the Dockerfile's MODEL_REVISION
# Expected: all 14 committed photos. The bar allows one miss: this model has never run where these
# tests were written (no Hub there), and baboon.jpg (a mandrill, a class ImageNet-1k lacks) is the
# likeliest to go elsewhere.
MIN_CORRECT = 13

pytestmark = pytest.mark.skipif(
    not HUB_MODEL_DIR, reason="needs google/vit-base-patch16-224 baked into HUB_MODEL_DIR (GitHub CI does it)"
)


def test_the_pinned_vit_classifies_the_committed_photos(
    server_factory: Callable[..., Server], photos: list[Photo]
) -> None:
    folder = Path(HUB_MODEL_DIR).resolve()
    manifest = json.loads((folder / "vit-space-manifest.json").read_text())
    assert manifest["model_id"] == "google/vit-base-patch16-224" and manifest["commit_sha"] == PINNED
    server = server_factory(folder)
    with server.client() as client:
        served = client.get("/info").json()["model"]["backend"]
        tops = {}
        for photo in photos:
            response = client.post("/predict", content=photo.path.read_bytes())
            assert response.status_code == 200, response.text
            tops[photo.path.name] = (response.json()[0]["label"], photo.accepted)
    for name, (top, accepted) in tops.items():
        print(f"{'ok ' if top in accepted else 'BAD'} {name:16} {top!r}")
    correct = sum(top in accepted for top, accepted in tops.values())
    print(f"{correct}/{len(tops)} top-1 accepted ({served})")
    assert len(tops) == 14 and correct >= MIN_CORRECT, tops
