"""HTTP routes: ``POST /predict`` (the Hugging Face Inference API's image-classification contract, one image
or a list), health, readiness and model info. Bodies are read by :mod:`space.web.bodies`, parameters by
:mod:`space.serving.params`; every user mistake becomes a 4xx ``{"error": ...}`` (:mod:`space.web.errors`)."""

from __future__ import annotations

import platform
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from space import __version__
from space.serving import params
from space.web.bodies import ACCEPTED, image_request_body, read_images
from space.web.deps import BodyLimitsDep, ServiceDep

router = APIRouter()


class Label(BaseModel):
    label: str
    score: float


class ErrorBody(BaseModel):
    error: str


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving HTTP (the model may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
def readyz(service: ServiceDep) -> JSONResponse:
    """Readiness: 200 once the model is loaded and warmed, 503 before."""
    if not service.ready:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready"})


@router.get("/info", tags=["health"])
def info(service: ServiceDep) -> dict[str, Any]:
    """What is being served: model id, revision, labels, backend, versions, and the bake manifest."""
    model = service.info
    settings = service.settings
    return {
        "app": "vit-space",
        "version": __version__,
        "ready": service.ready,
        "model": model.as_dict() if model else {"model": settings.model},
        "name": service.name,
        "settings": {
            "top_k": settings.top_k,
            "max_upload_mb": settings.max_upload_mb,
            "max_pixels": settings.max_pixels,
            "max_images_per_request": settings.max_images_per_request,
        },
        "python": platform.python_version(),
    }


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 408, 413, 415, 422, 503, 504)
}


FUNCTION_SCHEMA = {"type": "string", "enum": list(params.FUNCTIONS), "description": params.FUNCTION_HELP}


@router.post(
    "/predict",
    tags=["inference"],
    response_model=list[Label] | list[list[Label]],
    responses=ERROR_RESPONSES,
    openapi_extra=image_request_body(
        ACCEPTED, {"top_k": {"type": "integer", "minimum": 1}, "function_to_apply": FUNCTION_SCHEMA}
    ),
)
async def predict(
    request: Request,
    service: ServiceDep,
    limits: BodyLimitsDep,
    top_k: Annotated[str | None, Query(description=params.TOP_K_HELP)] = None,
    function_to_apply: Annotated[
        str | None,
        Query(description=params.FUNCTION_HELP, json_schema_extra={"enum": list(params.FUNCTIONS)}),
    ] = None,
) -> Any:
    """Classify one image (``[{"label": ..., "score": ...}, ...]``, highest score first), or a list of
    images (a list of such lists, in order)."""
    # Admission first (space/serving/admission.py): when full, 503 at once and the body is never read.
    with service.reserve() as slot:
        body = await read_images(request, limits)
        query = {"top_k": top_k, "function_to_apply": function_to_apply}  # the query string wins
        rankings = await service.classify(body.images, params.parse(query, body.parameters), slot)
    answers = [[{"label": p.label, "score": p.score} for p in ranking] for ranking in rankings]
    return JSONResponse(answers if body.many else answers[0])
