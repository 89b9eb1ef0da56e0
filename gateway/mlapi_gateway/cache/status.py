"""The ``X-Cache`` answer header: what the caches did for a request, named by its answer.

The adapters decide (deep in the call); the header is sent by the response. A pure ASGI
middleware gives each HTTP request one mutable outcome through a context variable (tasks the
request starts inherit it), and adds the header when the response starts.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-cache"


@dataclass
class CacheOutcome:
    """What the caches did: ``hit``, ``semantic-hit``, ``miss`` or ``bypass`` (None: nothing)."""

    value: str | None = None


_OUTCOME: ContextVar[CacheOutcome | None] = ContextVar("mlapi_cache_outcome", default=None)


def report(value: str) -> None:
    """Name the cache outcome of the current request (no-op outside a request, e.g. jobs)."""
    outcome = _OUTCOME.get()
    if outcome is not None:
        outcome.value = value


def outcome_of(field: object) -> str | None:
    """Return the ``X-Cache`` value that an answer's ``cache`` field names (None: no field)."""
    if not isinstance(field, dict):
        return None
    if field.get("hit"):
        return "hit"
    return "bypass" if "bypass" in field else "miss"


class CacheHeaderMiddleware:
    """Add ``X-Cache: <outcome>`` to the answer of a request whose outcome was reported.

    An answer that names its outcome itself (predict: from its ``cache`` field, on every path
    including the predict shortcut, which does not pass here) keeps its own header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        outcome = CacheOutcome()
        token = _OUTCOME.set(outcome)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start" and outcome.value is not None:
                headers = list(message.get("headers", ()))
                if any(name.lower() == HEADER for name, _ in headers):
                    await send(message)
                    return
                headers.append((HEADER, outcome.value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            _OUTCOME.reset(token)
