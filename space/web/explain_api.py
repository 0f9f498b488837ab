"""HTTP routes for explanations: ``POST /explain`` (the occlusion map of one image, as JSON or as a PNG
overlay) and ``GET /labels`` (what ``target`` may name). The body is read exactly as ``/predict`` reads it
(space/web/routes.py, space/web/bodies.py), so the three upload forms and every 4xx behave the same."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel

from space.errors import BadParameter
from space.serving import params
from space.serving.overlay import drawn, png_bytes
from space.web import routes
from space.web.bodies import ACCEPTED, image_request_body, read_images
from space.web.deps import BodyLimitsDep, ServiceDep

router = APIRouter()


class ExplanationBody(BaseModel):
    label: str
    index: int
    score: float
    grid: list[list[float]]
    rows: int
    cols: int
    forward_passes: int
    seconds: float
    method: str
    reading: str


class Labels(BaseModel):
    labels: list[str]


@router.post(
    "/explain",
    tags=["inference"],
    response_model=ExplanationBody,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The map as JSON, or with ?format=png the image with the map laid over it.",
        },
        **routes.ERROR_RESPONSES,
    },
    openapi_extra=image_request_body(
        ACCEPTED.replace('"top_k": N', '"target": "<label or index>"'),
        {"target": {"type": ["string", "integer"]}},
    ),
)
async def explain(
    request: Request,
    service: ServiceDep,
    limits: BodyLimitsDep,
    target: Annotated[
        str | None, Query(description=params.TARGET_HELP + " Also the JSON parameter `target`.")
    ] = None,
    output: Annotated[
        Literal["json", "png"],
        Query(alias="format", description="json: the grid; png: the image with the map laid over it."),
    ] = "json",
) -> Any:
    """Where the model looked: an occlusion map (each cell: how much hiding it lowers the class's score),
    with the method, its cost and how to read it."""
    # Admission first, as for /predict: when full, 503 at once and the body is never read.
    with service.reserve(service.explain_weight) as slot:
        body = await read_images(request, limits)
        if body.many:
            raise BadParameter("/explain explains one image per request; send one.")
        asked = params.parse({"target": target}, body.parameters, accepted=params.EXPLAIN)
        explanation, image = await service.explain(body.images[0], asked, slot)
    if output == "png":
        return Response(png_bytes(drawn(image, explanation)), media_type="image/png")
    return explanation.as_dict()


@router.get("/labels", tags=["health"], response_model=Labels, responses={503: {"model": routes.ErrorBody}})
def labels(service: ServiceDep) -> dict[str, list[str]]:
    """This model's labels in class-index order: what /explain's ``target`` may name."""
    return {"labels": list(service.labels)}
