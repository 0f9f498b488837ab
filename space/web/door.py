"""Refusal at the door: when every admission slot is taken, a request for the model is answered 503 by
this pure ASGI layer, outermost, before request logging, the token check, routing or its body.

Under overload most requests are refused, and each refusal that goes through FastAPI (middleware,
routing, dependencies, an exception handler, a log line) costs about half a millisecond of CPU: at a few
hundred refusals a second that is CPU the model needed. Here a refusal is a dictionary lookup and two
prebuilt messages (the answer is the same one the route gives: 503, ``Retry-After``, ``Connection:
close``). A request that passes the door can still be refused by the route, which takes the slot for real
(:meth:`space.serving.admission.Admission.slot`); the door only makes the common case cheap. The refusal says
nothing about the model, so it may come before the token check. Refusals are counted in the metrics and
logged at most once a second, not once each.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from space.serving.admission import RETRY_AFTER_S, Admission

log = logging.getLogger(__name__)

LOG_EVERY_S = 1.0


class AdmissionDoor:
    """Answer ``POST`` to the model's routes with 503 at once while ``admission`` is full;
    ``model_route(path)`` is the route's template for those routes (the metrics' label), else None."""

    def __init__(
        self,
        app: ASGIApp,
        admission: Admission,
        model_route: Callable[[str], str | None],
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.admission = admission
        self.model_route = model_route
        self.on_refused = on_refused
        self.body = json.dumps({"error": admission.busy_message()}).encode()
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
            (b"connection", b"close"),  # the upload is never read: the connection cannot be reused
        ]
        self.refused = 0
        self.logged_at = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and self.admission.full() and scope["method"] == "POST":
            route = self.model_route(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        headers = [*self.headers, (b"x-request-id", uuid.uuid4().hex.encode())]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})
        self._count(route)

    def _count(self, route: str) -> None:
        if self.on_refused is not None:
            self.on_refused(route)
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= LOG_EVERY_S:
            log.warning(
                "refused %d request(s) at the door in the last %.1f s: all %d admission slots taken",
                self.refused,
                now - self.logged_at,
                self.admission.limit,
                extra={"refused": self.refused},
            )
            self.refused, self.logged_at = 0, now
