"""HTTP routes: ``POST /predict`` (the Hugging Face Inference API's image-classification contract),
health, readiness and model info. Bodies are read by :mod:`space.web.bodies`; every user mistake becomes
a 4xx ``{"error": ...}`` (:mod:`space.web.errors`)."""

from __future__ import annotations

import platform
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from space import __version__
from space.errors import NotReady
from space.serving.classifier import FUNCTIONS, check_function
from space.serving.pipeline import Runtime
from space.web.bodies import ACCEPTED, image_request_body, parse_top_k, read_image

router = APIRouter()

FUNCTION_HELP = (
    "How logits become scores, as in transformers' image-classification pipeline: sigmoid, softmax or "
    "none (raw logits). Default: the model's own (sigmoid for multi-label or one-label models, none for "
    "regression, else softmax)."
)


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
    # Admission first (space/serving/admission.py): when full, 503 at once and the body is never read.
    with request.app.state.admission.slot() as slot:
        image, parameters = await read_image(request, runtime.limits.max_bytes)
        k = parse_top_k(top_k if top_k is not None else parameters.get("top_k"))
        function = function_to_apply if function_to_apply is not None else parameters.get("function_to_apply")
        function = None if function is None else check_function(function)
        predictions = await slot.run(runtime.classify_bytes, image, k, function)
    return [{"label": p.label, "score": p.score} for p in predictions]
