"""Errors to HTTP answers, in one place: every mistake a client can make and every refusal of the serving
path, as ``{"error": ...}`` with its status code (and ``Retry-After`` where a retry helps); the page shows
the same messages (:func:`space.web.ui.page_error`). Nothing a user sends becomes a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect

from space.errors import NotReady, UserError
from space.serving.admission import RETRY_AFTER_S, DeadlineExceeded, Overloaded

REFUSALS = (UserError, Overloaded, DeadlineExceeded, NotReady)  # what the page shows as a message (ui.py)


def install_error_handlers(app: FastAPI) -> None:
    """4xx for user errors (their own status), 503 while loading or when full, 504 past the time limit,
    499 for a client that left mid-upload, 422 for a request FastAPI could not validate."""
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

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, error: Overloaded) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if error.body_unread:  # the body is still on its way: close rather than read it
            headers["Connection"] = "close"
        return JSONResponse({"error": str(error)}, status_code=503, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def client_left(_: Request, __: ClientDisconnect) -> JSONResponse:
        # The client left mid-upload (its slot is already free): nobody to answer, nothing to log but
        # the request line. 499 is nginx's "client closed request".
        return JSONResponse({"error": "The client closed the connection during the upload."}, status_code=499)

    @app.exception_handler(DeadlineExceeded)
    async def deadline(_: Request, error: DeadlineExceeded) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=504)
