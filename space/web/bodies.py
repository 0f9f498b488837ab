"""Request bodies of the HF-contract image routes (``/predict``, ``/explain``): raw bytes, JSON with base64
``inputs`` (one image or a list), or multipart (one ``file`` part or several); bounded in size and time
while they arrive, and never fetched from a URL."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request

from space.errors import BadImage, BadParameter, BodyTimeout, TooLarge, UnsupportedMediaType, UserError
from space.settings import Settings

RAW_TYPES = ("image/", "application/octet-stream")
ACCEPTED = (
    "raw image bytes (Content-Type image/* or application/octet-stream), JSON "
    '{"inputs": "<base64 image or data: URI>", "parameters": {"top_k": N, "function_to_apply": "softmax"}} '
    '(or a list of images in "inputs"), or multipart/form-data with one or more "file" fields'
)
URL = re.compile(r"^\s*[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Multipart and base64 JSON carry the image with some overhead; the image itself is checked exactly later.
ENVELOPE_FACTOR = 1.4
ENVELOPE_SLACK = 64 * 1024


@dataclass(frozen=True)
class BodyLimits:
    """What one request body may be: its bytes, how long it may take to arrive, how many images."""

    max_bytes: int
    timeout_s: float
    max_images: int

    @classmethod
    def of(cls, settings: Settings) -> BodyLimits:
        return cls(settings.max_upload_bytes, settings.body_timeout_s, settings.max_images_per_request)

    @property
    def envelope_bytes(self) -> int:
        """Multipart and base64 JSON carry the images with some overhead; the images are checked exactly
        once decoded."""
        return int(self.max_bytes * ENVELOPE_FACTOR) + ENVELOPE_SLACK


@dataclass(frozen=True)
class ImageBody:
    """The images of one request and its body's ``parameters``; ``many``: the client sent a list (JSON
    ``inputs``, several multipart files), so the answer is a list of answers, as the pipeline gives."""

    images: list[bytes]
    parameters: object  # the JSON body's "parameters", as sent
    many: bool


def image_request_body(description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads images the three ways :func:`read_images` does."""
    binary = {"type": "string", "format": "binary"}
    one = {"type": "string", "format": "byte"}
    inputs = {
        "description": "an image, base64-encoded or as a data:image/...;base64, URI (never a URL: the "
        "server does not fetch), or a list of them (the answer is then a list of answers)",
        "oneOf": [one, {"type": "array", "items": one}],
    }
    json_body = {
        "type": "object",
        "required": ["inputs"],
        "properties": {"inputs": inputs, "parameters": {"type": "object", "properties": parameters}},
    }
    return {
        "requestBody": {
            "description": description,
            "content": {
                "image/*": {"schema": binary},
                "application/json": {"schema": json_body},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"oneOf": [binary, {"type": "array", "items": binary}]}},
                    }
                },
            },
        }
    }


async def read_images(request: Request, limits: BodyLimits) -> ImageBody:
    """The images and the JSON body's ``parameters`` (else empty), whichever of the three forms."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # never inflate a client's compressed body (gzip bombs)
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted. Send the image file as it is: image formats "
            "are already compressed."
        )
    content_type = request.headers.get("content-type", "application/octet-stream").lower()
    media_type = content_type.split(";")[0].strip()
    if media_type.startswith(RAW_TYPES) or not media_type:
        return ImageBody([await read_body(request, limits.max_bytes, limits.timeout_s)], {}, many=False)
    if media_type == "application/json":
        body = parse_json(await read_body(request, limits.envelope_bytes, limits.timeout_s))
    elif media_type == "multipart/form-data":
        await read_body(request, limits.envelope_bytes, limits.timeout_s)  # bounded, cached for the parser
        body = await parse_multipart(request, limits.max_images)
    else:
        raise UnsupportedMediaType(f"Content-Type {media_type!r} is not accepted. Send {ACCEPTED}.")
    total = sum(map(len, body.images))
    if total > limits.max_bytes:
        raise TooLarge(
            f"The {len(body.images)} images total {total / 1e6:.1f} MB; the limit for one request is "
            f"{limits.max_bytes / 1e6:.1f} MB. Send fewer images per request, or smaller ones."
        )
    return body


async def read_body(
    request: Request, limit: int, timeout: float, prefix: tuple[int, Callable[[bytes], None]] | None = None
) -> bytes:
    """The request body, refusing (413) as soon as it passes ``limit`` bytes instead of buffering it all,
    and (408) when it takes longer than ``timeout`` seconds to arrive. ``prefix``: (n, check), where
    ``check`` sees the first n bytes before the rest is read (and may refuse the request)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(_too_large(int(declared), limit))
    chunks, size = [], 0
    pending = prefix
    try:
        with anyio.fail_after(timeout):  # a stalled upload must not hold the request open forever
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(_too_large(size, limit))
                chunks.append(chunk)
                if pending is not None and size >= pending[0]:
                    head = b"".join(chunks)
                    chunks = [head]
                    pending[1](head[: pending[0]])
                    pending = None
    except TimeoutError:
        raise BodyTimeout(
            f"The upload did not finish within {timeout:g} s ({size:,} bytes received). "
            "Check the connection and send the whole file again."
        ) from None
    body = b"".join(chunks)
    request._body = body  # lets Starlette's form parser read the same bytes
    return body


def parse_json(body: bytes) -> ImageBody:
    """``{"inputs": "<base64 or data: URI>" or a list of them, "parameters": {...}}``."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting ([[[[...]]]])
        raise BadImage(f"The body is not valid JSON. Send {ACCEPTED}.") from None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    many = isinstance(inputs, list)
    if not (isinstance(inputs, str) or (many and inputs and all(isinstance(i, str) for i in inputs))):
        raise BadParameter(
            'The JSON body needs "inputs": a base64-encoded image as a string, or a non-empty list of them.'
        )
    parameters = payload.get("parameters") or {}  # checked with the query's (space/serving/params.py)
    if not many:
        return ImageBody([decode_inputs(inputs)], parameters, many=False)
    images = []
    for index, item in enumerate(inputs):
        try:
            images.append(decode_inputs(item))
        except UserError as error:
            raise error.at(index) from None
    return ImageBody(images, parameters, many=True)


def decode_inputs(inputs: str) -> bytes:
    """The image in ``inputs``: plain base64 (line breaks allowed) or a base64 ``data:`` URI; never a URL."""
    if URL.match(inputs):
        raise BadParameter(
            '"inputs" is a URL, and this server never fetches URLs: it runs offline, and fetching would let '
            "callers make it reach into its own network. Download the image yourself and send its bytes: "
            'the raw body, base64 in "inputs", or a multipart "file" field.'
        )
    encoded = inputs.strip()
    if encoded[:5].lower() == "data:":  # a data URI, as browsers produce: data:image/png;base64,....
        header, comma, encoded = encoded[5:].partition(",")
        if not comma:
            raise BadImage('"inputs" is a data: URI without a comma. Send data:image/png;base64,<base64>.')
        if header.split(";")[-1].strip().lower() != "base64":
            raise BadImage(
                '"inputs" is a data: URI that is not base64-encoded (no ";base64" before the comma). '
                "Send data:image/png;base64,<base64 of the file>, or the plain base64."
            )
    encoded = "".join(encoded.split())  # `base64` wraps its output at 76 columns
    if "-" in encoded or "_" in encoded:  # the URL-safe alphabet
        encoded = encoded.translate(str.maketrans("-_", "+/"))
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadImage('"inputs" is not valid base64. Send the image file base64-encoded.') from None


async def parse_multipart(request: Request, max_images: int) -> ImageBody:
    """The ``file`` fields (else every file) of a multipart form, kept in memory; several files are a
    list. One file more than ``max_images`` is read, so that the limit's 413 can say how many came."""
    try:
        form = await request.form(max_files=max_images + 1, max_fields=20)
    except Exception as error:
        if "too many files" in str(getattr(error, "detail", error)).lower():
            raise TooLarge(
                f"The form holds more than {max_images} files; the limit is {max_images} images per request "
                "(SPACE_MAX_IMAGES_PER_REQUEST). Send them in several requests."
            ) from None
        raise BadImage(
            f"The multipart body could not be read ({error}). Use form fields named 'file', at most "
            f"{max_images} of them."
        ) from None
    uploads = [v for v in form.getlist("file") if not isinstance(v, str)]
    uploads = uploads or [v for _, v in form.multi_items() if not isinstance(v, str)]
    if not uploads:
        raise BadParameter(
            "The form has no file. Send the image in a field named 'file' (curl -F file=@photo.jpg)."
        )
    images = [await upload.read() for upload in uploads]
    await form.close()
    return ImageBody(images, {}, many=len(images) > 1)


def _too_large(size: int, limit: int) -> str:
    return (
        f"The request body is over {limit / 1e6:.1f} MB ({size / 1e6:.1f} MB so far). "
        "Send a smaller or more compressed image, or fewer images per request."
    )
