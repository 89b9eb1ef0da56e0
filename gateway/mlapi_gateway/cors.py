"""CORS for browser clients: an allow-list of origins (settings.cors_*), none by default.

Pure ASGI middleware. A request without an Origin header, or from the gateway's own origin,
passes untouched. From a listed origin, a preflight (OPTIONS with
Access-Control-Request-Method) is answered here (204) and every other answer gets
Access-Control-Allow-Origin, the exposed headers and, when configured, Allow-Credentials.
From any other origin the gateway refuses (403 problem+json, before any work) instead of
serving an answer the page could not read: a cross-origin POST from an unlisted page then
never runs.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlapi_gateway.metrics import count_error
from mlapi_gateway.problems import problem
from mlapi_gateway.request_id import request_id_of
from mlapi_gateway.settings import GatewaySettings

ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class CorsMiddleware:
    """Answers preflights of listed origins, adds their CORS headers, refuses the others."""

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.origins = frozenset(o.rstrip("/") for o in settings.cors_allow_origins)
        self.credentials = settings.cors_allow_credentials
        self.expose = ", ".join(settings.cors_expose_headers)
        self.max_age_s = settings.cors_max_age_s

    def _common(self, origin: str) -> list[tuple[bytes, bytes]]:
        headers = [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
        if self.credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None or _same_origin(scope, origin):
            await self.app(scope, receive, send)
            return
        preflight = scope["method"] == "OPTIONS" and _header(
            scope, b"access-control-request-method"
        )
        if origin not in self.origins:
            await self._refuse(scope, receive, send, origin)
        elif preflight:
            await self._preflight(scope, send, origin)
        else:
            await self._with_headers(scope, receive, send, origin)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, origin: str) -> None:
        count_error("cors", 403)
        response = problem(
            403,
            "Origin not allowed",
            f"the origin {origin!r} may not call this API (settings.cors_allow_origins)",
            "cors",
            scope["path"],
            {"Vary": "Origin"},
            request_id_of(scope),
        )
        await response(scope, receive, send)

    async def _preflight(self, scope: Scope, send: Send, origin: str) -> None:
        headers = [
            *self._common(origin),
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-max-age", str(self.max_age_s).encode()),
        ]
        requested = _header(scope, b"access-control-request-headers")
        if requested:  # any header a listed origin's page sends (openai's SDK sends its own)
            headers.append((b"access-control-allow-headers", requested.encode("latin-1")))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _with_headers(self, scope: Scope, receive: Receive, send: Send, origin: str) -> None:
        extra = self._common(origin)
        if self.expose:
            extra.append((b"access-control-expose-headers", self.expose.encode()))

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _same_origin(scope: Scope, origin: str) -> bool:
    """Whether ``origin`` is the gateway's own (its Host as the request named it)."""
    host = _header(scope, b"host")
    return host is not None and origin.partition("://")[2] == host
