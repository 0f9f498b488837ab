"""A generated corpus of hostile and odd uploads, built at test time (no binary blobs in the repository).

Each :class:`Case` is the bytes a client sends, the headers it sends them with, and the statuses the
server may answer. Valid images hidden in polyglots may be classified (200): the server only ever returns
labels, never the bytes, so classifying them is harmless.
"""

from __future__ import annotations

import functools
import gzip
import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

BAD = frozenset({400})
TOO_LARGE = frozenset({413})
BAD_OR_LARGE = frozenset({400, 413})
IMAGE_OR_BAD = frozenset({200, 400})


@dataclass(frozen=True)
class Case:
    """One upload: what is sent, how, and which statuses are right."""

    name: str
    body: bytes
    expect: frozenset[int]
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/octet-stream"})


def photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small gradient: decodes the same everywhere, cheap to make."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :].repeat(size[1], 0)
    y = np.linspace(0, 255, size[1], dtype=np.uint8)[:, None].repeat(size[0], 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def seeds() -> dict[str, bytes]:
    """One small valid file per accepted format (and an animated GIF and a multi-page TIFF)."""
    image = photo()
    frames = [photo().rotate(angle) for angle in (0, 90, 180)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    pages = io.BytesIO()
    frames[0].save(pages, "TIFF", save_all=True, append_images=frames[1:])
    return {
        "jpeg": encode(image, "JPEG", quality=85),
        "progressive.jpeg": encode(image, "JPEG", progressive=True),
        "png": encode(image, "PNG"),
        "rgba.png": encode(image.convert("RGBA"), "PNG"),
        "webp": encode(image, "WEBP", quality=80),
        "lossless.webp": encode(image, "WEBP", lossless=True),
        "gif": encode(image.quantize(64), "GIF"),
        "animated.gif": animated.getvalue(),
        "bmp": encode(image, "BMP"),
        "tiff": encode(image, "TIFF"),
        "deflate.tiff": encode(image, "TIFF", compression="tiff_adobe_deflate"),
        "multipage.tiff": pages.getvalue(),
    }


# --- hand-built headers ----------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, extra_chunks: bytes = b"", idat: bytes | None = None) -> bytes:
    """A PNG with the given header (RGB, 8 bit) and, by default, one tiny valid-looking IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(b"\x00" + b"\x80" * 3)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra_chunks
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def png_bomb(width: int, height: int) -> bytes:
    """A real, fully valid PNG of ``width`` x ``height`` black pixels: kilobytes on the wire."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width * 3
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png(width, height, idat=data)


def gif_many_frames(count: int) -> bytes:
    """A 1x1 GIF with ``count`` frames (about 20 bytes each)."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame * count + b"\x3b"


def gif_screen(width: int, height: int) -> bytes:
    """A GIF whose logical screen claims ``width`` x ``height`` with a 1x1 frame."""
    data = bytearray(gif_many_frames(1))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP header claiming ``width`` x ``height`` followed by a few pixels only."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\x80" * 64
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 54) + info + pixels


def tiff_header(width: int, height: int) -> bytes:
    """A little-endian TIFF claiming ``width`` x ``height`` with a strip far past the end of the file."""
    entries = [
        (256, 4, 1, width),  # ImageWidth (LONG)
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 0x7FFF0000),  # StripOffsets: nowhere
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 0x7FFFFFFF),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00"


def webp_canvas(width: int, height: int) -> bytes:
    """A VP8X WebP claiming a ``width`` x ``height`` canvas (up to 16384 x 16384) with no image data."""
    chunk = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(chunk)) + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_with_segments(marker: int, payload: bytes, count: int) -> bytes:
    """A valid JPEG with ``count`` extra APPn segments of ``payload`` (each at most 65533 bytes)."""
    jpeg = encode(photo(), "JPEG")
    segment = struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload
    return jpeg[:2] + segment * count + jpeg[2:]


def jpeg_huge_icc(total: int) -> bytes:
    """A JPEG whose ICC profile is split over many APP2 segments adding up to ``total`` bytes."""
    jpeg = encode(photo(), "JPEG")
    chunk = 65000
    parts = (total + chunk - 1) // chunk
    segments = b""
    for index in range(parts):
        payload = b"ICC_PROFILE\x00" + bytes([index + 1 if index < 255 else 255, min(parts, 255)])
        payload += b"\x00" * chunk
        segments += struct.pack(">BBH", 0xFF, 0xE2, len(payload) + 2) + payload
    return jpeg[:2] + segments + jpeg[2:]


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (about 1000:1)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as handle:
        block = b"\x00" * (1 << 20)
        for _ in range(size >> 20):
            handle.write(block)
    return out.getvalue()


SVG = b"""<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100" onload="alert(1)">
<text>&xxe;</text><script>alert(document.cookie)</script></svg>"""
HTML = b"<!DOCTYPE html><html><body><script>fetch('/gradio_api/file=/etc/passwd')</script></body></html>"


@functools.cache
def corpus() -> list[Case]:
    """Every hostile case, with the statuses allowed for it (built once per test session)."""
    s = seeds()
    cases = [
        Case("empty", b"", BAD),
        Case("one byte", b"\xff", BAD),
        Case("text", b"hello, this is not an image\n" * 10, BAD),
        Case("svg as png", SVG, BAD, {"content-type": "image/png"}),
        Case("svg as svg", SVG, BAD, {"content-type": "image/svg+xml"}),
        Case("html as jpeg", HTML, BAD, {"content-type": "image/jpeg"}),
        Case("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", BAD),
        Case("zip", b"PK\x03\x04" + b"\x00" * 26 + b"PK\x05\x06" + b"\x00" * 18, BAD),
        Case("elf", b"\x7fELF\x02\x01\x01" + b"\x00" * 57, BAD),
        Case("ico (not accepted)", encode(photo((32, 32)), "ICO"), BAD),
        Case("psd magic", b"8BPS\x00\x01" + b"\x00" * 64, BAD),
        Case("png width 0", png(0, 10), BAD),
        Case("png height 0", png(10, 0), BAD),
        Case("png 2^31-1 wide", png(2**31 - 1, 1), BAD_OR_LARGE),
        Case("png 2^31 wide", png(2**31, 2**31), BAD_OR_LARGE),
        Case("png 65535 square", png(65535, 65535), TOO_LARGE),
        Case("png decompression bomb 10000x10000", png_bomb(10000, 10000), TOO_LARGE),
        Case("png 6000x6000 black, under the pixel limit", png_bomb(6000, 6000), frozenset({200})),
        Case(
            "png iCCP zlib bomb",
            png(8, 8, png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9))),
            BAD,
        ),
        Case(
            "png zTXt bomb",
            png(8, 8, png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))),
            BAD,
        ),
        Case("png bad crc", s["png"][:29] + b"\x00\x00\x00\x00" + s["png"][33:], BAD),
        Case("gif 100k frames", gif_many_frames(100_000), frozenset({200})),
        Case("gif 65535 square screen", gif_screen(65535, 65535), TOO_LARGE),
        Case("gif 0x0 screen, 1x1 frame", gif_screen(0, 0), IMAGE_OR_BAD),
        Case("bmp 2^31-1 wide", bmp_header(2**31 - 1, 1), BAD_OR_LARGE),
        Case("bmp negative width", bmp_header(-50, 50), BAD_OR_LARGE),
        Case("bmp 100000 square", bmp_header(100_000, 100_000), BAD_OR_LARGE),
        Case("tiff 2^31-1 square", tiff_header(2**31 - 1, 2**31 - 1), BAD_OR_LARGE),
        Case("tiff strip past end", tiff_header(64, 64), BAD),
        Case("webp 16384 square canvas", webp_canvas(16384, 16384), BAD_OR_LARGE),
        Case(
            "jpeg 150 x 64 KB EXIF",
            jpeg_with_segments(0xE1, b"Exif\x00\x00" + b"\x00" * 65000, 150),
            IMAGE_OR_BAD,
        ),
        Case("jpeg 9 MB ICC profile", jpeg_huge_icc(9_000_000), IMAGE_OR_BAD),
        Case("jpeg + html polyglot", s["jpeg"] + HTML, IMAGE_OR_BAD),
        Case("gif + javascript polyglot", b"GIF89a/*" + s["gif"][8:] + b"*/=1;alert(1);", IMAGE_OR_BAD),
        Case("png + zip polyglot", s["png"] + b"PK\x05\x06" + b"\x00" * 18, IMAGE_OR_BAD),
        Case("html + png polyglot", HTML + s["png"], BAD, {"content-type": "image/png"}),
        Case(
            "gzip bomb with Content-Encoding",
            gzip_bomb(64 << 20),
            frozenset({415}),
            {"content-type": "image/png", "content-encoding": "gzip"},
        ),
        Case(
            "gzipped png with Content-Encoding",
            gzip.compress(s["png"]),
            frozenset({415}),
            {"content-type": "image/png", "content-encoding": "gzip"},
        ),
        Case(
            "json with hostile base64",
            b'{"inputs": "' + b"QUFB" * 100 + b'"}',
            BAD,
            {"content-type": "application/json"},
        ),
        Case(
            "deeply nested json",
            b"[" * 100_000 + b"]" * 100_000,
            frozenset({400, 422}),
            {"content-type": "application/json"},
        ),
        Case(
            "multipart without boundary",
            b"--x\r\n\r\n",
            frozenset({400, 422}),
            {"content-type": "multipart/form-data"},
        ),
    ]
    for name, data in s.items():
        for cut in (1, 8, 32):
            cases.append(Case(f"{name} truncated to {cut} bytes", data[:cut], BAD))
        # Cut late, the first frame (or all but the trailer) may be whole: decoding it is fine.
        for cut in (len(data) // 2, len(data) - 1):
            cases.append(Case(f"{name} truncated to {cut} bytes", data[:cut], IMAGE_OR_BAD))
    return cases
