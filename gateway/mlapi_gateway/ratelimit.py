"""Token-bucket rate limiting per caller: in memory (one process) or in Redis (shared).

``take`` returns 0 when a token was taken, else the seconds until one will be available.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from mlapi_gateway.errors import Unavailable
from mlapi_gateway.settings import Plan

log = logging.getLogger(__name__)


class RateLimiter(Protocol):
    async def take(self, caller: str, plan: str) -> float: ...

    async def close(self) -> None: ...


def bucket_take(tokens: float, updated_s: float, now_s: float, plan: Plan) -> tuple[float, float]:
    """Refill a bucket to ``now_s`` and try to take one token: (tokens left, wait_s)."""
    tokens = min(float(plan.burst), tokens + max(0.0, now_s - updated_s) * plan.rate_per_s)
    if tokens >= 1.0:
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / plan.rate_per_s


@dataclass
class MemoryRateLimiter:
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
            # Fail closed: without the shared bucket the limits could not be enforced.
            log.error("rate limiter: Redis failed: %s", exc)
            raise Unavailable("the rate limiter is unavailable; retry later", 1) from None
        return int(wait_us) / 1e6

    async def close(self) -> None:
        await self._redis.aclose()
