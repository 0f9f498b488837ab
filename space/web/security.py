"""Safe defaults for a public URL: CORS closed unless configured, one secret for every route, UI login.

Both credentials are off by default (a Space is usually public) and held as ``SecretStr`` so that they
never appear in logs, reprs or ``/info``. With ``SPACE_API_TOKEN`` set, access is denied by default:
every route needs ``Authorization: Bearer <token>`` or a logged-in page session, except the short
:data:`OPEN_PATHS` / :data:`OPEN_PREFIXES` list (probes, metrics, and what a browser needs to show the
login form). A route added later, by us or by a Gradio upgrade, is therefore protected without anyone
remembering to list it.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from space.settings import Settings

# Open without a token. Probes and Prometheus cannot send secrets, and they run no model; the rest is
# what a browser needs to *show* the login form (measured with Chromium): the page shell, which Gradio
# fills with the login form alone until the session is logged in, the login itself, and the page's
# scripts, styles and theme, which ship inside the gradio package and hold nothing of this server's.
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/", "/login", "/theme.css"}
)
OPEN_PREFIXES = ("/assets/", "/static/")


def is_open(path: str) -> bool:
    """Whether ``path`` is served without credentials (everything else needs the token or a login)."""
    trimmed = path.rstrip("/") or "/"
    return trimmed in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class GradioSessions:
    """Gradio's logged-in sessions (its ``tokens``), and one session that token holders are given.

    Gradio's own routes check its session cookie; a caller with the bearer token is let in by adding
    the cookie of a session made for them at start-up, so Gradio's checks and ours agree.
    """

    def __init__(self) -> None:
        self._app: Any = None
        self._api_session = secrets.token_urlsafe(32)

    def attach(self, gradio_app: Any) -> None:
        self._app = gradio_app
        gradio_app.tokens[self._api_session] = "api-token"

    def cookie_names(self) -> tuple[str, ...]:
        if self._app is None:
            return ()
        return (f"access-token-{self._app.cookie_id}", f"access-token-unsecure-{self._app.cookie_id}")

    def logged_in(self, cookies: dict[str, str]) -> bool:
        if self._app is None:
            return False
        tokens: dict[str, str] = self._app.tokens
        return any(cookies.get(name) in tokens for name in self.cookie_names())

    def api_cookie(self) -> bytes:
        names = self.cookie_names()
        if not names:
            return b""
        self._app.tokens[self._api_session] = "api-token"  # again: Gradio's /logout may have dropped it
        return f"{names[1]}={self._api_session}".encode()


def parse_cookies(header: bytes) -> dict[str, str]:
    found = {}
    for part in header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            found[name] = value
    return found


class BearerTokenMiddleware:
    """Refuses (401) every request outside the open list without the bearer token or a UI session."""

    def __init__(self, app: ASGIApp, token: str, sessions: GradioSessions) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)  # CORS preflights carry no credentials
            return
        headers = dict(scope["headers"])
        supplied = headers.get(b"authorization", b"")
        if hmac.compare_digest(supplied, self._expected):
            cookie = self._sessions.api_cookie()
            if cookie:  # let Gradio's own login check pass too
                old = headers.get(b"cookie")
                merged = old + b"; " + cookie if old else cookie
                others = [(k, v) for k, v in scope["headers"] if k != b"cookie"]
                scope = {**scope, "headers": [*others, (b"cookie", merged)]}
            await self.app(scope, receive, send)
            return
        if not supplied and self._sessions.logged_in(parse_cookies(headers.get(b"cookie", b""))):
            await self.app(scope, receive, send)  # the page's own calls, after its login
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = (
            "This endpoint needs 'Authorization: Bearer <token>' (the server's SPACE_API_TOKEN), "
            "or a login on the page."
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


def api_token(settings: Settings) -> str | None:
    if settings.api_token is None or not settings.api_token.get_secret_value():
        return None
    return settings.api_token.get_secret_value()


def install_security(app: FastAPI, settings: Settings) -> GradioSessions:
    """CORS (always installed, so Gradio's permissive default CORS is replaced) and the optional token;
    returns the session registry to attach to the Gradio app once it is mounted."""
    # With a parent CORSMiddleware, Gradio adds no CORS headers of its own to its routes; without it,
    # Gradio reflects any Origin when the host is not localhost.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["authorization", "content-type"],
        max_age=600,
    )
    sessions = GradioSessions()
    token = api_token(settings)
    if token is not None:
        app.add_middleware(BearerTokenMiddleware, token=token, sessions=sessions)
    return sessions


def secure_gradio(gradio_app: Any, blocks: Any, sessions: GradioSessions, settings: Settings) -> None:
    """After mounting: token holders get a Gradio session, and Gradio's MCP loopback client the token."""
    token = api_token(settings)
    if token is None:
        return
    sessions.attach(gradio_app)
    give_mcp_the_token(blocks, token)


def ui_credentials(settings: Settings) -> tuple[str, str] | Callable[[str, str], bool] | None:
    """Gradio's ``auth``: ``SPACE_UI_AUTH=user:password``, else the API token as password (any user
    name), else None (no login)."""
    if settings.ui_auth is not None:
        user, _, password = settings.ui_auth.get_secret_value().partition(":")  # checked by Settings
        return user, password
    token = api_token(settings)
    if token is None:
        return None
    expected = token.encode()

    def check(_user: str, password: str) -> bool:
        return hmac.compare_digest(password.encode(), expected)

    return check


def give_mcp_the_token(blocks: Any, token: str) -> None:
    """Gradio's MCP server runs queued tools through a ``gradio_client`` of its own, on loopback, built
    without credentials, so with the token set every tool call failed ("credentials were not
    provided"). Build that client the same way, with the token (the caller was already let in)."""
    server = getattr(blocks, "mcp_server_obj", None)
    if server is None:
        return
    from gradio import route_utils
    from gradio_client import Client

    original = server._get_or_create_client

    def client_with_token() -> Any:
        if server._client_instance is None:
            request = server.mcp_server.request_context.request
            root_url = route_utils.get_root_url(
                request=request, route_path=server.get_route_path(request), root_path=server.root_path
            )
            server._client_instance = Client(
                server.local_url or root_url,
                download_files=False,
                verbose=False,
                analytics_enabled=False,
                ssl_verify=False,
                _skip_components=False,
                headers={"x-gradio-user": "mcp", "authorization": f"Bearer {token}"},
            )
        return original()

    server._get_or_create_client = client_with_token
