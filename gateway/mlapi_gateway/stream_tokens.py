"""Stream tokens: how a browser's EventSource (a GET without headers) opens a stream.

``POST /v1/models/{model}/stream-tokens``, authenticated like any call, takes the body of a
stream (as ``POST .../stream``) and answers a token that opens exactly that stream once:
``GET /v1/models/{model}/stream?token=...``. A token is short-lived
(``stream_token_ttl_s``), single-use (taken atomically by the first GET), bound to the key
that minted it, the model and the body; the API key itself never travels in a URL. Only the
token's SHA-256 is stored: in Redis when the gateway uses Redis (any replica or worker can
serve the GET), else in the minting worker's memory (with several workers and no Redis the
GET may reach another worker and get a 401: configure Redis there).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from mlapi_gateway import errors
from mlapi_gateway.routes import event_stream, json_response
from mlapi_gateway.schemas import TensorPredict, parse_as
from mlapi_gateway.services import read_body, services
from mlapi_gateway.settings import GatewaySettings

TOKEN_PREFIX = "mlst_"
MODEL_PARAMETER = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
MINT_DOCUMENT = {
    "parameters": [MODEL_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TensorPredict"}}},
    },
}
MINTED_SCHEMA = {
    "type": "object",
    "required": ["token", "expires_in_s", "stream_url"],
    "properties": {
        "token": {"type": "string"},
        "expires_in_s": {"type": "number"},
        "stream_url": {"type": "string", "description": "GET it once (EventSource)"},
    },
}
GET_STREAM_DOCUMENT = {
    "parameters": [
        MODEL_PARAMETER,
        {
            "name": "token",
            "in": "query",
            "required": True,
            "schema": {"type": "string"},
            "description": "from POST /v1/models/{model}/stream-tokens; opens one stream",
        },
    ],
    # EventSource sends no Authorization header: the token is the credential.
    "security": [],
}


@dataclass(frozen=True)
class Grant:
    """What a token allows: one stream of ``model`` with ``body``, for key ``key_id``."""

    key_id: str
    model: str
    body: dict[str, Any]

    def to_json(self) -> bytes:
        return orjson.dumps({"key_id": self.key_id, "model": self.model, "body": self.body})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Grant:
        data = orjson.loads(raw)
        return cls(data["key_id"], data["model"], data["body"])


class TokenStore(Protocol):
    """Grants by token digest, each taken at most once before it expires."""

    async def put(self, digest: str, grant: Grant, ttl_s: float) -> None: ...

    async def take(self, digest: str) -> Grant | None: ...

    async def close(self) -> None: ...


@dataclass
class MemoryTokens:
    """Grants in this worker's memory (expired ones are dropped as new ones are minted)."""

    clock: Any = time.monotonic
    _grants: dict[str, tuple[float, Grant]] = field(default_factory=dict)

    async def put(self, digest: str, grant: Grant, ttl_s: float) -> None:
        now = self.clock()
        for stale in [d for d, (until, _) in self._grants.items() if until <= now]:
            del self._grants[stale]
        self._grants[digest] = (now + ttl_s, grant)

    async def take(self, digest: str) -> Grant | None:
        held = self._grants.pop(digest, None)
        if held is None or held[0] <= self.clock():
            return None
        return held[1]

    async def close(self) -> None:
        self._grants.clear()


class RedisTokens:
    """Grants in Redis with its own expiry; GETDEL takes one atomically (Redis >= 6.2)."""

    def __init__(self, url: str, prefix: str = "mlapi:st:") -> None:
        import redis.asyncio as redis

        self.prefix = prefix
        self._redis = redis.from_url(url)

    async def put(self, digest: str, grant: Grant, ttl_s: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.set(self.prefix + digest, grant.to_json(), px=int(ttl_s * 1000))
        except RedisError as exc:
            raise errors.UnavailableError("the token store is unavailable; retry later", 1) from exc

    async def take(self, digest: str) -> Grant | None:
        from redis.exceptions import RedisError

        try:
            raw = await self._redis.getdel(self.prefix + digest)
        except RedisError as exc:
            raise errors.UnavailableError("the token store is unavailable; retry later", 1) from exc
        return None if raw is None else Grant.from_json(raw)

    async def close(self) -> None:
        await self._redis.aclose()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def mint(request: Request) -> Response:
    """Mint a token that opens one stream of ``model`` with this body (GET .../stream)."""
    svc = services(request)
    principal = await svc.gate.admit(request, "predict")
    model = request.path_params["model"]
    svc.inference.adapter(model)  # 404 naming the exposed models
    raw = await read_body(request)
    body = parse_as(TensorPredict, raw)
    contract = await svc.inference.contract(model)  # 404/503 now rather than at the GET
    if not contract.decoupled:
        raise errors.RequestInvalidError(
            f"model '{model}' does not stream",
            [
                errors.FieldError(
                    "path.model", "not a streaming model", f"POST /v1/models/{model}/predict"
                )
            ],
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    ttl_s = svc.settings.stream_token_ttl_s
    grant = Grant(principal.id, model, body.model_dump(exclude_none=True))
    await request.app.state.stream_tokens.put(_digest(token), grant, ttl_s)
    return json_response(
        {
            "token": token,
            "expires_in_s": ttl_s,
            "stream_url": f"/v1/models/{model}/stream?token={token}",
        },
        status=201,
        headers={"Cache-Control": "no-store"},
    )


async def stream_with_token(request: Request) -> StreamingResponse:
    """Open the stream a token grants (server-sent events as POST .../stream sends them)."""
    svc = services(request)
    model = request.path_params["model"]
    token = request.query_params.get("token", "")
    grant = await request.app.state.stream_tokens.take(_digest(token)) if token else None
    if grant is None:
        raise errors.AuthenticationRequiredError(
            "send ?token= from POST /v1/models/{model}/stream-tokens (a token opens one stream, "
            f"within {svc.settings.stream_token_ttl_s:g} s of its minting)"
        )
    request.state.key_id = grant.key_id
    if grant.model != model:
        raise errors.ScopeMissingError(
            f"this token opens a stream of '{grant.model}', not '{model}'"
        )
    adapter = svc.inference.adapter(model)
    request.state.model = model
    body = parse_as(TensorPredict, grant.body)
    assert isinstance(body, TensorPredict)
    svc.streams.acquire(grant.key_id)
    return await event_stream(request, adapter, body, lambda: svc.streams.release(grant.key_id))


def add_stream_token_routes(app: FastAPI, settings: GatewaySettings) -> TokenStore:
    """Add the mint and GET stream routes; return the store (the app's lifespan closes it)."""
    store: TokenStore = RedisTokens(settings.redis_url) if settings.redis_url else MemoryTokens()
    app.state.stream_tokens = store
    add = app.router.add_api_route
    add(
        "/v1/models/{model}/stream-tokens",
        mint,
        methods=["POST"],
        tags=["models"],
        status_code=201,
        openapi_extra=MINT_DOCUMENT,
        responses={
            201: {
                "description": "a token opening one stream of this body",
                "content": {"application/json": {"schema": MINTED_SCHEMA}},
            }
        },
    )
    add(
        "/v1/models/{model}/stream",
        stream_with_token,
        methods=["GET"],
        tags=["models"],
        openapi_extra=GET_STREAM_DOCUMENT,
        responses={200: {"description": "text/event-stream: message events, then done or error"}},
    )
    return store
