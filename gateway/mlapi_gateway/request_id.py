"""Request ids: the caller's ``X-Request-ID`` when it is safe to echo and log, else a fresh one.

The access middleware assigns it; handlers read it from the request state (problem bodies,
error logs, the request id the gateway sends to Triton).
"""

from __future__ import annotations

import random
import re

from starlette.types import Scope

HEADER = "X-Request-ID"
HEADER_KEY = b"x-request-id"
# Callers' ids pass through when they could not break a log line or a header: UUIDs, W3C
# trace ids, ULIDs and the like fit; anything else gets a fresh id.
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    """Return a fresh request id: 32 hex digits (128 random bits).

    From ``random``'s generator, not the system's: an id names a request in logs and is not a
    secret, and this costs no system call per request. ``random`` reseeds in a forked child,
    so workers do not repeat each other's ids.
    """
    return f"{random.getrandbits(128):032x}"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """Return the caller's ``X-Request-ID`` when it is safe to echo and log, else a fresh id."""
    for name, value in headers:
        if name == HEADER_KEY:
            if _SAFE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


def request_id_of(scope: Scope) -> str | None:
    """Return the id the middleware gave this request (None outside it, e.g. a bare test app)."""
    state = scope.get("state")
    return state.get("request_id") if state else None
