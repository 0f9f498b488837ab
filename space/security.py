"""Safe defaults for a public URL: CORS closed unless configured, optional API token and UI login.

Both credentials are off by default (a Space is usually public) and held as ``SecretStr`` so that they
never appear in logs, reprs or ``/info``. Health, readiness and metrics stay open for probes.
"""

from __future__ import annotations

import hmac
import json

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from space.settings import Settings

# Routes the API token protects; everything else (health probes, the UI) follows its own rules.
PROTECTED_PATHS = ("/predict", "/info", "/explain", "/labels")


class BearerTokenMiddleware:
    """Refuses (401) requests to the protected paths without ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") not in PROTECTED_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":  # CORS preflights carry no credentials
            await self.app(scope, receive, send)
            return
        supplied = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(supplied, self._expected):
            await self.app(scope, receive, send)
            return
        message = (
            "This endpoint needs 'Authorization: Bearer <token>' (the server's SPACE_API_TOKEN)."
            if not supplied
            else "The bearer token is wrong."
        )
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="vit-space"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def install_security(app: FastAPI, settings: Settings) -> None:
    """CORS (always installed, so Gradio's permissive default CORS is replaced) and the optional token."""
    # With a parent CORSMiddleware, Gradio adds no CORS headers of its own to its routes; without it,
    # Gradio reflects any Origin when the host is not localhost.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["authorization", "content-type"],
        max_age=600,
    )
    if settings.api_token is not None and settings.api_token.get_secret_value():
        app.add_middleware(BearerTokenMiddleware, token=settings.api_token.get_secret_value())


def ui_credentials(settings: Settings) -> tuple[str, str] | None:
    """``SPACE_UI_AUTH=user:password`` -> Gradio's ``auth`` tuple, or None (no login)."""
    if settings.ui_auth is None:
        return None
    user, _, password = settings.ui_auth.get_secret_value().partition(":")  # checked by Settings
    return user, password
