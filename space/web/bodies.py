"""Request bodies of the image routes (``/predict``, ``/explain``): raw bytes, JSON with base64
``inputs``, or multipart; bounded in size and time while they arrive, and never fetched from a URL."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import anyio
from fastapi import Request

from space.errors import BadImage, BadParameter, BodyTimeout, TooLarge, UnsupportedMediaType

RAW_TYPES = ("image/", "application/octet-stream")
ACCEPTED = (
    "raw image bytes (Content-Type image/* or application/octet-stream), JSON "
    '{"inputs": "<base64 image or data: URI>", "parameters": {"top_k": N, "function_to_apply": "softmax"}}, '
    'or multipart/form-data with a "file" field'
)
URL = re.compile(r"^\s*[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Multipart and base64 JSON carry the image with some overhead; the image itself is checked exactly later.
ENVELOPE_FACTOR = 1.4
ENVELOPE_SLACK = 64 * 1024


def image_request_body(description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads an image the three ways :func:`read_image` does."""
    binary = {"type": "string", "format": "binary"}
    inputs = {
        "type": "string",
        "description": "the image, base64-encoded or as a data:image/...;base64, URI "
        "(never a URL: the server does not fetch)",
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
                "multipart/form-data": {"schema": {"type": "object", "properties": {"file": binary}}},
            },
        }
    }


async def read_image(request: Request, max_bytes: int) -> tuple[bytes, dict[str, object]]:
    """The image bytes and the JSON body's ``parameters`` (else empty), whichever of the three forms."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # never inflate a client's compressed body (gzip bombs)
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not accepted. Send the image file as it is: image formats "
            "are already compressed."
        )
    content_type = request.headers.get("content-type", "application/octet-stream").lower()
    media_type = content_type.split(";")[0].strip()
    if media_type.startswith(RAW_TYPES) or not media_type:
        return await read_body(request, max_bytes), {}
    envelope_limit = int(max_bytes * ENVELOPE_FACTOR) + ENVELOPE_SLACK
    if media_type == "application/json":
        return parse_json(await read_body(request, envelope_limit))
    if media_type == "multipart/form-data":
        await read_body(request, envelope_limit)  # bounded, and cached for the form parser
        return await parse_multipart(request), {}
    raise UnsupportedMediaType(f"Content-Type {media_type!r} is not accepted. Send {ACCEPTED}.")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it passes ``limit`` bytes instead of buffering it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(_too_large(int(declared), limit))
    chunks, size = [], 0
    timeout = request.app.state.runtime.settings.body_timeout_s
    try:
        with anyio.fail_after(timeout):  # a stalled upload must not hold the request open forever
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(_too_large(size, limit))
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(
            f"The upload did not finish within {timeout:g} s ({size:,} bytes received). "
            "Check the connection and send the whole file again."
        ) from None
    body = b"".join(chunks)
    request._body = body  # lets Starlette's form parser read the same bytes
    return body


def parse_json(body: bytes) -> tuple[bytes, dict[str, object]]:
    """``{"inputs": "<base64 or data: URI>", "parameters": {...}}`` -> (image bytes, parameters)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting ([[[[...]]]])
        raise BadImage(f"The body is not valid JSON. Send {ACCEPTED}.") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), str):
        raise BadParameter('The JSON body needs "inputs": a base64-encoded image as a string.')
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadParameter('"parameters" must be an object, e.g. {"top_k": 5}.')
    return decode_inputs(payload["inputs"]), parameters


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


async def parse_multipart(request: Request) -> bytes:
    """The ``file`` field (or the only file) of a multipart form, kept in memory."""
    try:
        form = await request.form(max_files=1, max_fields=20)
    except Exception as error:
        raise BadImage(
            f"The multipart body could not be read ({error}). Use a form field named 'file'."
        ) from None
    upload = form.get("file") or next((v for v in form.values() if not isinstance(v, str)), None)
    if upload is None or isinstance(upload, str):
        raise BadParameter(
            "The form has no file. Send the image in a field named 'file' (curl -F file=@photo.jpg)."
        )
    data = await upload.read()
    await form.close()
    return data


def parse_top_k(value: object) -> int | None:
    """``top_k`` from a query string or JSON into an int; the range is checked against the model later."""
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise BadParameter(f"top_k must be a whole number; got {value!r}.")
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise BadParameter(f"top_k must be a whole number; got {value!r}.") from None


def _too_large(size: int, limit: int) -> str:
    return (
        f"The request body is over {limit / 1e6:.1f} MB ({size / 1e6:.1f} MB so far). "
        "Send a smaller or more compressed image."
    )
