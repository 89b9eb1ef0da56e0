"""Admission control of the gateway.

Token-bucket rate limits per caller (in memory, or shared in Redis), open streams per caller,
and the per-worker in-flight cap with the request-body guard.

``take`` returns 0 when a token was taken, else the seconds until one will be available.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlapi_gateway import errors
from mlapi_gateway.errors import UnavailableError
from mlapi_gateway.metrics import count_error
from mlapi_gateway.problems import log_server_error, render, status_of
from mlapi_gateway.request_id import request_id_of
from mlapi_gateway.settings import GatewaySettings, Plan

log = logging.getLogger(__name__)
CLOSE = (b"connection", b"close")
# The guarded routes: the native API and its OpenAI-compatible surface (answers there are
# OpenAI error objects, as every other answer of those routes).
GUARDED = ("/v1/", "/openai/v1/")
OPENAI_PREFIX = "/openai/"


class RateLimiter(Protocol):
    """Token buckets per caller and plan, wherever they are kept."""

    async def take(self, caller: str, plan: str) -> float: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def bucket_take(tokens: float, updated_s: float, now_s: float, plan: Plan) -> tuple[float, float]:
    """Refill a bucket to ``now_s`` and try to take one token: (tokens left, wait_s)."""
    tokens = min(float(plan.burst), tokens + max(0.0, now_s - updated_s) * plan.rate_per_s)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / plan.rate_per_s


@dataclass
class MemoryRateLimiter:
    """Token buckets in this process (each worker limits on its own)."""

    plans: dict[str, Plan]
    clock: Any = time.monotonic
    _buckets: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    def plan(self, name: str) -> Plan:
        return self.plans.get(name) or self.plans["default"]

    async def take(self, caller: str, plan: str) -> float:
        limits = self.plan(plan)
        now = self.clock()
        tokens, updated = self._buckets.get((caller, plan), (float(limits.burst), now))
        tokens, wait_s = bucket_take(tokens, updated, now, limits)
        self._buckets[(caller, plan)] = (tokens, now)
        return wait_s

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._buckets.clear()


# Atomic refill-and-take on a hash {tokens, ts}; the clock is Redis's own (TIME), so replicas
# with skewed clocks still share one bucket. Returns the wait in microseconds (0 = admitted).
_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = burst; ts = now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return math.ceil(wait * 1000000)
"""


class RedisRateLimiter:
    """The same bucket in Redis, so every gateway replica draws from one bucket per caller."""

    def __init__(self, url: str, plans: dict[str, Plan], prefix: str = "mlapi:rl:") -> None:
        import redis.asyncio as redis  # only needed when Redis is configured

        self.plans = plans
        self.prefix = prefix
        self._redis = redis.from_url(url)
        self._script = self._redis.register_script(_TAKE_LUA)

    async def take(self, caller: str, plan: str) -> float:
        from redis.exceptions import RedisError

        limits = self.plans.get(plan) or self.plans["default"]
        try:
            wait_us = await self._script(
                keys=[f"{self.prefix}{plan}:{caller}"], args=[limits.rate_per_s, limits.burst]
            )
        except RedisError as exc:
            # Fail closed: without the shared bucket the limits could not be enforced. Logged
            # with the request id by the error handler, like every 5xx.
            raise UnavailableError("the rate limiter is unavailable; retry later", 1) from exc
        return int(wait_us) / 1e6

    async def ready(self) -> bool:
        """Whether Redis answers a PING (readiness: without it every limited call is a 503)."""
        from redis.exceptions import RedisError

        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError) as exc:
            log.warning("rate limiter: Redis does not answer: %s", exc)
            return False

    async def close(self) -> None:
        await self._redis.aclose()


class StreamSlots:
    """Open streams per caller on this worker: at most ``limit`` each (429 beyond)."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._open: dict[str, int] = {}

    def acquire(self, caller: str) -> None:
        held = self._open.get(caller, 0)
        if held >= self.limit:
            raise errors.TooManyStreamsError(
                f"this key already has {held} open {'stream' if held == 1 else 'streams'} "
                f"(at most {self.limit}); close one or retry later",
                self.retry_after_s,
            )
        self._open[caller] = held + 1

    def release(self, caller: str) -> None:
        held = self._open.get(caller, 0) - 1
        if held > 0:
            self._open[caller] = held
        else:
            self._open.pop(caller, None)

    def held(self, caller: str) -> int:
        return self._open.get(caller, 0)


class RequestGuard:
    """Pure ASGI middleware in front of the /v1 and /openai/v1 routes of one worker.

    It sheds a request while ``max_in_flight`` others are being served (503 + Retry-After,
    before any work), refuses a declared body over ``max_body_bytes`` before anything reads
    it (413), and closes the connection after an answer sent while part of the request body
    was still unread (401, 408, 413, 503...), so a trickled body holds nothing afterwards.
    /healthz, /readyz and /metrics pass untouched: probes work under overload.
    """

    def __init__(self, app: ASGIApp, settings: GatewaySettings) -> None:
        self.app = app
        self.max_in_flight = settings.max_in_flight
        self.max_body_bytes = settings.max_body_bytes
        self.retry_after_s = settings.retry_after_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(GUARDED):
            await self.app(scope, receive, send)
            return
        declared = declared_body(scope)
        refused = self.refusal(scope, declared)
        if refused is not None:
            await refused(scope, receive, send)
            return
        self.in_flight += 1
        try:
            if declared == 0:
                await self.app(scope, receive, send)
            else:
                await self._closing_if_unread(scope, receive, send)
        finally:
            self.in_flight -= 1

    def refusal(self, scope: Scope, declared: int | None) -> Response | None:
        """Return the answer of a request refused before any work (counted and logged), or None.

        A shed (503) while ``max_in_flight`` others are served, or a declared body over
        ``max_body_bytes`` (413); with a body, the answer closes the connection.
        """
        refusal: errors.GatewayError | None = None
        if self.in_flight >= self.max_in_flight:
            refusal = errors.OverloadedError(
                f"the gateway is serving {self.in_flight} requests (at most "
                f"{self.max_in_flight} per worker); retry later",
                self.retry_after_s,
            )
        elif declared is not None and declared > self.max_body_bytes:
            refusal = errors.BodyTooLargeError(
                "the request body is too large",
                [
                    errors.FieldError(
                        "body", f"{declared} bytes", f"at most {self.max_body_bytes} bytes"
                    )
                ],
            )
        if refusal is None:
            return None
        request_id = request_id_of(scope)
        where = f"{scope['method']} {scope['path']}"
        if scope["path"].startswith(OPENAI_PREFIX):
            # Imported here: the OpenAI package builds on the routes that import this module.
            from mlapi_gateway.openai.error_objects import error_response

            response = error_response(refusal, request_id, where)
        else:
            count_error(refusal.error_type, status_of(refusal))
            log_server_error(refusal, request_id, where)
            response = render(refusal, scope["path"], request_id)
        if declared != 0:
            response.headers["connection"] = "close"
        return response

    async def _closing_if_unread(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_done = False

        async def tracked_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not body_done:
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        await self.app(scope, tracked_receive, closing_send)


def declared_body(scope: Scope) -> int | None:
    """Return the Content-Length (0 without one), or None for a body of unknown length."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
        if name == b"transfer-encoding":
            return None
    return 0
