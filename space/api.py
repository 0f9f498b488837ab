"""HTTP routes: ``POST /predict`` (the Hugging Face Inference API's image-classification contract),
health, readiness and model info. Every user mistake becomes a 4xx ``{"error": ...}``."""

from __future__ import annotations

import base64
import binascii
import json
import platform
import re
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.formparsers import MultiPartParser

from space import __version__
from space.classifier import FUNCTIONS, check_function
from space.errors import (
    BadImage,
    BadParameter,
    BodyTimeout,
    NotReady,
    TooLarge,
    UnsupportedMediaType,
    UserError,
)
from space.runtime import Runtime

router = APIRouter()

RAW_TYPES = ("image/", "application/octet-stream")
ACCEPTED = (
    "raw image bytes (Content-Type image/* or application/octet-stream), JSON "
    '{"inputs": "<base64 image or data: URI>", "parameters": {"top_k": N, "function_to_apply": "softmax"}}, '
    'or multipart/form-data with a "file" field'
)
FUNCTION_HELP = (
    "How logits become scores, as in transformers' image-classification pipeline: sigmoid, softmax or "
    "none (raw logits). Default: the model's own (sigmoid for multi-label or one-label models, none for "
    "regression, else softmax)."
)
URL = re.compile(r"^\s*[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# Multipart and base64 JSON carry the image with some overhead; the image itself is checked exactly later.
ENVELOPE_FACTOR = 1.4
ENVELOPE_SLACK = 64 * 1024


class Label(BaseModel):
    label: str
    score: float


class ErrorBody(BaseModel):
    error: str


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving HTTP (the model may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: 200 once the model is loaded and warmed, 503 before."""
    if not runtime.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready"})


@router.get("/info", tags=["health"])
def info(runtime: RuntimeDep) -> dict[str, Any]:
    """What is being served: model id, revision, labels, backend, versions, and the bake manifest."""
    model = runtime.info
    return {
        "app": "vit-space",
        "version": __version__,
        "ready": runtime.ready,
        "model": model.as_dict() if model else {"model": runtime.settings.model},
        "settings": {
            "top_k": runtime.settings.top_k,
            "max_upload_mb": runtime.settings.max_upload_mb,
            "max_pixels": runtime.settings.max_pixels,
        },
        "python": platform.python_version(),
    }


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


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 408, 413, 415, 422, 503, 504)
}


@router.post(
    "/predict",
    tags=["inference"],
    response_model=list[Label],
    responses=ERROR_RESPONSES,
    openapi_extra=image_request_body(
        ACCEPTED,
        {
            "top_k": {"type": "integer", "minimum": 1},
            "function_to_apply": {"type": "string", "enum": list(FUNCTIONS), "description": FUNCTION_HELP},
        },
    ),
)
async def predict(
    request: Request,
    runtime: RuntimeDep,
    top_k: Annotated[
        str | None,
        Query(
            description="How many classes to return (default: SPACE_TOP_K; more than the model has "
            "returns them all)."
        ),
    ] = None,
    function_to_apply: Annotated[
        str | None, Query(description=FUNCTION_HELP, json_schema_extra={"enum": list(FUNCTIONS)})
    ] = None,
) -> list[dict[str, Any]]:
    """Classify one image; returns ``[{"label": ..., "score": ...}, ...]``, highest score first."""
    if not runtime.ready:
        raise NotReady("The model is still loading; retry in a few seconds.")
    # Admission first (space/admission.py): when full, 503 at once and the body is never read.
    with request.app.state.admission.slot() as slot:
        image, parameters = await read_image(request, runtime.limits.max_bytes)
        k = parse_top_k(top_k if top_k is not None else parameters.get("top_k"))
        function = function_to_apply if function_to_apply is not None else parameters.get("function_to_apply")
        function = None if function is None else check_function(function)
        predictions = await slot.run(runtime.classify_bytes, image, k, function)
    return [{"label": p.label, "score": p.score} for p in predictions]


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


def install_error_handlers(app: FastAPI) -> None:
    """Map errors to ``{"error": ...}`` bodies with their status codes; nothing a user sends is a 500."""
    # Keep multipart uploads in memory (the body is already bounded by the upload limit).
    MultiPartParser.spool_max_size = 1 << 62

    @app.exception_handler(UserError)
    async def user_error(_: Request, error: UserError) -> JSONResponse:
        # After 408/413 the rest of the body may still be on its way: close rather than read it.
        headers = {"Connection": "close"} if error.status_code in (408, 413) else None
        return JSONResponse({"error": error.message}, status_code=error.status_code, headers=headers)

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, error: NotReady) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse({"error": f"Invalid request: {details}."}, status_code=422)
