"""Per-minute budgets of the OpenAI-compatible routes: requests and tokens per key.

Each budget is a token bucket holding one minute's worth and refilled continuously, kept in
this process or in Redis (``redis_url``: every replica draws from one bucket per key). A
request takes one request and its token estimate (prompt plus ``max_tokens``) when it
starts; what it did not use is given back when it ends. Its answer carries OpenAI's
``x-ratelimit-*`` headers; an empty bucket is a 429 with Retry-After.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from mlapi_gateway import errors
from mlapi_gateway.settings import GatewaySettings

KINDS = ("requests", "tokens")


@dataclass(frozen=True)
class Draw:
    """The outcome of one draw: seconds to wait (0: granted), what is left, the bucket size."""

    wait_s: float
    remaining: int
    limit: int
    reset_s: float


class BucketStore(Protocol):
    """Buckets of ``n`` units per minute, wherever they are kept."""

    async def draw(self, key: str, per_min: int, n: int) -> Draw: ...

    async def close(self) -> None: ...


def refill(
    tokens: float, updated_s: float, now_s: float, per_min: int, n: int
) -> tuple[float, Draw]:
    """Refill a bucket to ``now_s`` and draw ``n`` (negative: give back): (tokens left, draw)."""
    rate = per_min / 60.0
    tokens = min(float(per_min), tokens + max(0.0, now_s - updated_s) * rate)
    wait_s = 0.0
    if n <= tokens or n < 0:
        tokens = min(float(per_min), tokens - n)
    else:
        wait_s = (n - tokens) / rate
    return tokens, Draw(wait_s, int(tokens), per_min, (per_min - tokens) / rate)


@dataclass
class MemoryBuckets:
    """Buckets in this process (each worker counts on its own)."""

    clock: Any = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    async def draw(self, key: str, per_min: int, n: int) -> Draw:
        now = self.clock()
        tokens, updated = self._buckets.get(key, (float(per_min), now))
        tokens, outcome = refill(tokens, updated, now, per_min, n)
        self._buckets[key] = (tokens, now)
        return outcome

    async def close(self) -> None:
        self._buckets.clear()


# Refill-and-draw on a hash {tokens, ts} with Redis's clock; returns {wait_us, tokens_left}.
_DRAW_LUA = """
local per_min = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local rate = per_min / 60
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then tokens = per_min; ts = now end
tokens = math.min(per_min, tokens + math.max(0, now - ts) * rate)
local wait = 0
if n <= tokens or n < 0 then tokens = math.min(per_min, tokens - n) else wait = (n - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 61000)
return {math.ceil(wait * 1000000), math.floor(tokens)}
"""


class RedisBuckets:
    """The same buckets in Redis, shared by every replica."""

    def __init__(self, url: str, prefix: str = "mlapi:oai:") -> None:
        import redis.asyncio as redis

        self.prefix = prefix
        self._redis = redis.from_url(url)
        self._script = self._redis.register_script(_DRAW_LUA)

    async def draw(self, key: str, per_min: int, n: int) -> Draw:
        from redis.exceptions import RedisError

        try:
            wait_us, left = await self._script(keys=[self.prefix + key], args=[per_min, n])
        except RedisError as exc:
            raise errors.UnavailableError(
                "the rate limiter is unavailable; retry later", 1
            ) from exc
        rate = per_min / 60.0
        return Draw(int(wait_us) / 1e6, int(left), per_min, (per_min - int(left)) / rate)

    async def close(self) -> None:
        await self._redis.aclose()


def duration(seconds: float) -> str:
    """Return ``seconds`` as OpenAI writes a reset time: ``250ms``, ``12s``, ``1m30s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


class Budgets:
    """The per-minute request and token budgets of each key plan (settings.openai_*_per_min)."""

    def __init__(self, settings: GatewaySettings, store: BucketStore | None = None) -> None:
        self.per_min = {
            "requests": settings.openai_requests_per_min,
            "tokens": settings.openai_tokens_per_min,
        }
        self.retry_after_min_s = 1
        if store is None:
            store = RedisBuckets(settings.redis_url) if settings.redis_url else MemoryBuckets()
        self.store = store

    def limit(self, plan: str, kind: str) -> int | None:
        """Return the bucket size of ``plan`` for ``kind`` (None: no budget)."""
        return self.per_min[kind].get(plan)

    async def take(self, caller: str, plan: str, tokens: int, headers: dict[str, str]) -> None:
        """Take one request and ``tokens`` tokens, filling ``headers``; 429 when either is short.

        A request larger than the whole token budget can never pass: 400 naming max_tokens.
        """
        for kind, n in (("requests", 1), ("tokens", tokens)):
            per_min = self.limit(plan, kind)
            if per_min is None:
                continue
            if n > per_min:
                raise errors.RequestInvalidError(
                    f"this request may use {n} tokens, more than the {per_min} tokens per minute of plan '{plan}'",
                    [
                        errors.FieldError(
                            "max_tokens", f"{n} tokens with the prompt", f"at most {per_min}"
                        )
                    ],
                )
            outcome = await self.store.draw(f"{kind}:{plan}:{caller}", per_min, n)
            _headers(headers, kind, outcome)
            if outcome.wait_s > 0:
                if kind == "tokens":  # the request drawn above is given back: nothing ran
                    await self.give_back(caller, plan, "requests", 1)
                retry_s = max(self.retry_after_min_s, int(-(-outcome.wait_s // 1)))
                raise errors.RateLimitedError(
                    f"{kind} per minute of plan '{plan}' exhausted; retry in {retry_s} s", retry_s
                )

    async def give_back(self, caller: str, plan: str, kind: str, n: int) -> None:
        """Return ``n`` unused units of ``kind`` to the caller's bucket."""
        per_min = self.limit(plan, kind)
        if per_min is not None and n > 0:
            await self.store.draw(f"{kind}:{plan}:{caller}", per_min, -n)

    async def close(self) -> None:
        await self.store.close()


def _headers(headers: dict[str, str], kind: str, outcome: Draw) -> None:
    headers[f"x-ratelimit-limit-{kind}"] = str(outcome.limit)
    headers[f"x-ratelimit-remaining-{kind}"] = str(outcome.remaining)
    headers[f"x-ratelimit-reset-{kind}"] = duration(outcome.reset_s)
