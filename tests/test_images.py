"""Image decoding: every accepted format and mode becomes the RGB image a browser would show; bad input
gets a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from space.errors import BadImage, TooLarge, UserError
from space.serving.images import ImageLimits, decode, read_file

LIMITS = ImageLimits()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient(size: tuple[int, int] = (64, 48)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :].repeat(size[1], 0)
    y = np.linspace(0, 255, size[1], dtype=np.uint8)[:, None].repeat(size[0], 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "GIF"])
def test_lossless_formats_decode_to_the_same_rgb(fmt: str) -> None:
    image = gradient() if fmt != "GIF" else gradient().quantize(256).convert("RGB")
    decoded = decode(encode(image, fmt), LIMITS)
    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_decode_close_to_the_original(fmt: str) -> None:
    image = gradient()
    decoded = decode(encode(image, fmt, quality=95), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == image.size
    assert np.abs(np.asarray(decoded, float) - np.asarray(image, float)).mean() < 4


def test_animated_gif_uses_the_first_frame() -> None:
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=100)
    assert decode(data, LIMITS).getpixel((4, 4)) == (255, 0, 0)


def test_transparency_is_composited_onto_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    decoded = decode(encode(rgba, "PNG"), LIMITS)
    assert decoded.getpixel((0, 0)) == (0, 0, 255)
    assert decoded.getpixel((3, 3)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in decoded.getpixel((1, 0)))


def test_palette_with_transparency_and_grayscale_alpha() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 255, 0, 10, 20, 30])
    palette.info["transparency"] = 0
    assert decode(encode(palette, "PNG", transparency=0), LIMITS).getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (4, 4), (0, 0))
    assert decode(encode(la, "PNG"), LIMITS).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    decoded = decode(encode(Image.fromarray(values), "PNG"), LIMITS)
    assert [decoded.getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    decoded = decode(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100), LIMITS)
    red, green, blue = decoded.getpixel((4, 4))
    assert red > 240 and green < 15 and blue < 15


def test_exif_orientation_is_applied() -> None:
    upright = Image.new("RGB", (40, 20), (0, 0, 0))
    upright.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    decoded = decode(encode(stored, "JPEG", exif=exif, quality=95), LIMITS)
    assert decoded.size == (40, 20)
    assert decoded.getpixel((5, 10))[0] > 200 and decoded.getpixel((35, 10))[0] < 50


BAD_INPUTS = {
    "empty": (b"", BadImage, "empty"),
    "text": (b"hello, I am not an image", BadImage, "not an image"),
    "png header with garbage": (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20, BadImage, "image"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', BadImage, "not an image"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_raises_a_clear_user_error(name: str) -> None:
    data, error_type, words = BAD_INPUTS[name]
    with pytest.raises(error_type, match=words) as caught:
        decode(data, LIMITS)
    assert "JPEG, PNG" in caught.value.message or "Send" in caught.value.message


def test_truncated_jpeg_is_a_bad_image() -> None:
    data = encode(gradient((256, 256)), "JPEG")
    with pytest.raises(BadImage, match="truncated"):
        decode(data[: len(data) // 2], LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = encode(Image.new("L", (10_000, 10_000)), "PNG")  # ~100 kB of file, 100 Mpx of pixels
    assert len(bomb) < 200_000
    with pytest.raises(TooLarge, match="pixels"):
        decode(bomb, LIMITS)
    with pytest.raises(TooLarge, match="pixels"):
        decode(encode(Image.new("L", (300, 300)), "PNG"), ImageLimits(max_pixels=80_000))


def test_byte_limit_applies_to_bytes_and_files(tmp_path) -> None:
    data = encode(gradient(), "PNG")
    limits = ImageLimits(max_bytes=len(data) - 1)
    with pytest.raises(TooLarge, match="limit"):
        decode(data, limits)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(TooLarge):
        read_file(path, limits)
    assert read_file(path, LIMITS).size == (64, 48)


def test_every_error_is_a_user_error_with_a_status() -> None:
    for data, _, _ in BAD_INPUTS.values():
        with pytest.raises(UserError) as caught:
            decode(data, LIMITS)
        assert 400 <= caught.value.status_code < 500
