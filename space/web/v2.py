"""The Open Inference Protocol (KServe v2) REST front door, as ``kserve/open-inference-protocol`` defines it,
with Triton's binary-data and classification extensions, so that ``tritonclient`` and KServe's clients call
this server as they call Triton or a KServe model server.

The model takes one ``BYTES`` input, ``image``, shape ``[-1]``: each element is an encoded image file (in
a binary tensor, the file's bytes; in JSON, the file in base64). It answers one ``FP32`` output,
``scores``, shape ``[-1, labels]``, after the model's ``function_to_apply`` (a request parameter
overrides it); with ``classification: K`` on the requested output, ``K`` strings
``"score:index:label"`` per image instead, best first. Everything goes through the same service, batcher
and admission slots as ``/predict``; the tensors are :mod:`space.web.v2_tensors`' job.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from space import __version__
from space.errors import NotFound
from space.serving import params
from space.serving.service import ClassificationService
from space.web import v2_tensors as tensors
from space.web.bodies import read_body
from space.web.deps import BodyLimitsDep, ServiceDep

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

INFER_ROUTE = "/v2/models/{model_name}/infer"
VERSION = "1"  # one model, one version: what the v2 paths' optional /versions/{v} may name
ModelName = Annotated[
    str, Path(description="The model's name (SPACE_MODEL_NAME); GET /v2/models/... lists it.")
]
PROTOCOL_PARAMETERS = frozenset({"binary_data_output"})  # Triton's; the rest are the service's


def is_infer_path(path: str) -> bool:
    """``/v2/models/NAME/infer`` or ``/v2/models/NAME/versions/V/infer``: the route that runs the model."""
    parts = path.split("/")
    return parts[1:3] == ["v2", "models"] and parts[-1] == "infer" and len(parts) in (5, 7)


def check_model(service: ClassificationService, name: str, version: str | None = None) -> None:
    """404 for a name (or version) this server does not serve, naming the one it does."""
    if name != service.name or version not in (None, VERSION):
        asked = name + (f" version {version}" if version is not None else "")
        raise NotFound(
            f"Model {asked!r} is not served here. This server serves {service.name!r} (version {VERSION}): "
            f"GET /v2/models/{service.name} describes it."
        )


@router.get("", summary="Server metadata")
def server_metadata() -> dict[str, Any]:
    return {
        "name": "vit-space",
        "version": __version__,
        "extensions": ["binary_tensor_data", "classification"],
    }


@router.get("/health/live", summary="Liveness (open: no token)")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: the model is loaded (open: no token)")
def ready(service: ServiceDep) -> JSONResponse:
    return _readiness({"ready": service.ready}, service.ready)


@router.get("/models/{model_name}", summary="Model metadata: its input and output tensors")
@router.get("/models/{model_name}/versions/{version}", summary="Model metadata")
def model_metadata(service: ServiceDep, model_name: ModelName, version: str | None = None) -> dict[str, Any]:
    check_model(service, model_name, version)
    info = service.info
    return {
        "name": service.name,
        "versions": [VERSION],
        "platform": info.backend if info else "loading",
        "inputs": [{"name": tensors.INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": tensors.OUTPUT, "datatype": "FP32", "shape": [-1, len(service.labels)]}],
    }


@router.get("/models/{model_name}/ready", summary="Model readiness")
@router.get("/models/{model_name}/versions/{version}/ready", summary="Model readiness")
def model_ready(service: ServiceDep, model_name: ModelName, version: str | None = None) -> JSONResponse:
    check_model(service, model_name, version)
    return _readiness({"name": service.name, "ready": service.ready}, service.ready)


@router.post("/models/{model_name}/infer", summary="Classify a batch of encoded images")
@router.post("/models/{model_name}/versions/{version}/infer", summary="Classify a batch of encoded images")
async def infer(
    request: Request,
    service: ServiceDep,
    limits: BodyLimitsDep,
    model_name: ModelName,
    version: str | None = None,
) -> Response:
    check_model(service, model_name, version)
    # Admission first: when full, 503 at once, the body unread. A binary request's JSON header says how
    # many images follow, so its slots are taken (or refused whole) before the images are read.
    with service.reserve() as slot:
        header_length = tensors.header_length(request.headers)

        def admit(header: bytes) -> None:
            count = tensors.count_images(tensors.parse_header(header))
            service.check_count(count)
            slot.grow(count, body_unread=True)

        prefix = (header_length, admit) if header_length is not None else None
        body = await read_body(request, limits.envelope_bytes, limits.timeout_s, prefix)
        call = tensors.parse_request(body, header_length)
        asked = {k: v for k, v in call.parameters.items() if k not in PROTOCOL_PARAMETERS}
        scores = await service.score(call.images, params.parse(asked, accepted=params.SCORE), slot)
    answer = tensors.encode_response(call, scores, service.labels, service.name, VERSION)
    return Response(answer.body, headers=answer.headers, media_type=answer.media_type)


def _readiness(body: dict[str, Any], ready: bool) -> JSONResponse:
    return JSONResponse(
        body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "2"}
    )
