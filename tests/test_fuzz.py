"""Fuzzing the decoding path (space/images.py) over every accepted format, in process.

Whatever the bytes, ``decode`` either returns an RGB image within the pixel limit or raises a
``UserError`` (400/413) with a message; any other exception would be a 500 in the server. Hypothesis runs
derandomized with a bounded number of examples, so CI sees the same inputs every run.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from space.errors import UserError
from space.serving.images import ImageLimits, decode
from tests.hostile import corpus

# Pillow warns (and then raises or recovers) on corrupt EXIF; the outcome is what is checked.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LIMITS = ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=4_000_000)
SEEDS = corpus.seeds()
FUZZ = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check(data: bytes) -> str:
    """Decode ``data``; fail on anything but an RGB image within limits or a 4xx ``UserError``."""
    started = time.perf_counter()
    try:
        image = decode(data, LIMITS, draft_size=(224, 224))
    except UserError as error:
        assert error.status_code in (400, 413), error
        assert len(error.message) > 20
        outcome = str(error.status_code)
    else:
        assert image.mode == "RGB"
        width, height = image.size
        assert 0 < width * height <= LIMITS.max_pixels
        outcome = "200"
    # Not a speed assertion: a hang or a decompression bomb would take minutes, not a second.
    assert time.perf_counter() - started < 10, f"decoding {len(data)} bytes took too long"
    return outcome


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_truncated_at_every_few_bytes(name: str) -> None:
    data = SEEDS[name]
    step = max(1, len(data) // 300)  # about 300 cuts per file, every byte of small ones
    outcomes = {check(data[:cut]) for cut in range(0, len(data), step)}
    assert "400" in outcomes  # the short cuts at least are refused
    assert check(data) == "200"  # and the whole file still decodes


@FUZZ
@given(
    name=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=12),
)
def test_random_bytes_flipped(name: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(SEEDS[name])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    check(bytes(data))


@FUZZ
@given(
    name=st.sampled_from(sorted(SEEDS)),
    start=st.integers(0, 1 << 16),
    noise=st.binary(min_size=1, max_size=256),
)
def test_random_bytes_overwritten(name: str, start: int, noise: bytes) -> None:
    data = bytearray(SEEDS[name])
    start %= len(data)
    data[start : start + len(noise)] = noise
    check(bytes(data))


@FUZZ
@given(
    magic=st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]),
    tail=st.binary(max_size=512),
)
def test_magic_bytes_then_garbage(magic: bytes, tail: bytes) -> None:
    check(magic + tail)


DIMENSION = st.one_of(
    st.sampled_from([0, 1, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1]), st.integers(0, 2**32 - 1)
)


@FUZZ
@given(width=DIMENSION, height=DIMENSION)
def test_absurd_png_dimensions(width: int, height: int) -> None:
    outcome = check(corpus.png(width, height))
    if width * height > LIMITS.max_pixels:
        assert outcome == "413" or outcome == "400"


@FUZZ
@given(width=st.integers(0, 65535), height=st.integers(0, 65535))
def test_absurd_gif_screens(width: int, height: int) -> None:
    check(corpus.gif_screen(width, height))


@FUZZ
@given(width=st.integers(-(2**31), 2**31 - 1), height=st.integers(-(2**31), 2**31 - 1))
def test_absurd_bmp_dimensions(width: int, height: int) -> None:
    check(corpus.bmp_header(width, height))


@FUZZ
@given(width=DIMENSION, height=DIMENSION)
def test_absurd_tiff_dimensions(width: int, height: int) -> None:
    check(corpus.tiff_header(width, height))


@FUZZ
@given(width=st.integers(1, 1 << 24), height=st.integers(1, 1 << 24))
def test_absurd_webp_canvases(width: int, height: int) -> None:
    check(corpus.webp_canvas(width, height))


def decoded_cases() -> list[corpus.Case]:
    """The corpus cases whose body is the image itself (not gzip-encoded, not a JSON/multipart envelope)."""
    return [
        case
        for case in corpus.corpus()
        if "content-encoding" not in case.headers
        and case.headers["content-type"].startswith(("image/", "application/octet-stream"))
    ]


@pytest.mark.parametrize("case", decoded_cases(), ids=lambda case: case.name)
def test_hostile_corpus_in_process(case: corpus.Case) -> None:
    """The corpus the HTTP test sends, straight into ``decode`` with the server's default limits."""
    try:
        image = decode(case.body, ImageLimits())
        outcome = 200
        assert image.mode == "RGB"
    except UserError as error:
        outcome = error.status_code
    assert outcome in case.expect, f"{case.name}: got {outcome}, expected one of {sorted(case.expect)}"
