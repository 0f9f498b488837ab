"""What a route is handed (FastAPI ``Depends``): the classification service, and the body limits from its
settings. Routes never read ``app.state`` themselves."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from space.serving.service import ClassificationService
from space.web.bodies import BodyLimits


def get_service(request: Request) -> ClassificationService:
    return request.app.state.service


def get_body_limits(request: Request) -> BodyLimits:
    return request.app.state.body_limits


ServiceDep = Annotated[ClassificationService, Depends(get_service)]
BodyLimitsDep = Annotated[BodyLimits, Depends(get_body_limits)]
