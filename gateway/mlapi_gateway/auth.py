"""Authentication (Bearer API keys, or an explicit open mode) and per-key rate limiting."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from mlapi_gateway.errors import AuthenticationRequiredError, RateLimitedError, ScopeMissingError
from mlapi_gateway.keys import SCOPES, KeyStore
from mlapi_gateway.ratelimit import RateLimiter
from mlapi_gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key id (or ``open:<ip>`` in open mode), its scopes and plan."""

    id: str
    scopes: frozenset[str]
    plan: str


class Gatekeeper:
    """Admits a request to a route: its key, the route's scope, the key's rate limit."""

    def __init__(self, settings: GatewaySettings, keys: KeyStore, limiter: RateLimiter) -> None:
        self.open = settings.auth_mode == "open"
        self.open_plan = settings.open_mode_plan
        self.keys = keys
        self.limiter = limiter

    def authenticate(self, request: Request) -> Principal:
        if self.open:
            client = request.client.host if request.client else "unknown"
            return Principal(f"open:{client}", frozenset(SCOPES), self.open_plan)
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationRequiredError("send an API key as 'Authorization: Bearer <key>'")
        record = self.keys.lookup(key.strip())
        if record is None:
            raise AuthenticationRequiredError("the API key is not valid")
        return Principal(record.id, record.scopes, record.plan)

    async def admit(self, request: Request, scope: str) -> Principal:
        """Authenticate, check ``scope``, and take one token from the caller's bucket."""
        principal = self.authenticate(request)
        request.state.key_id = principal.id  # the access log names the key id, never the key
        if scope not in principal.scopes:
            raise ScopeMissingError(
                f"this key lacks the '{scope}' scope (it has: {', '.join(sorted(principal.scopes))})"
            )
        wait_s = await self.limiter.take(principal.id, principal.plan)
        if wait_s > 0:
            retry_after_s = max(1, int(-(-wait_s // 1)))
            raise RateLimitedError(
                f"rate limit of plan '{principal.plan}' exceeded; retry in {retry_after_s} s",
                retry_after_s,
            )
        return principal
