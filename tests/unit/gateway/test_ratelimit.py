from __future__ import annotations

import asyncio

import pytest

from mlapi_gateway.ratelimit import MemoryRateLimiter, bucket_take
from mlapi_gateway.settings import Plan

PLAN = Plan(rate_per_s=2.0, burst=3)


def test_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    tokens, wait = bucket_take(0.0, 0.0, 0.25, PLAN)  # 0.5 token after 0.25 s
    assert wait == pytest.approx(0.25) and tokens == pytest.approx(0.5)
    tokens, wait = bucket_take(0.0, 0.0, 100.0, PLAN)
    assert wait == 0 and tokens == pytest.approx(2.0)  # capped at burst 3, one taken


def test_memory_limiter_admits_a_burst_then_asks_to_wait() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter({"default": PLAN}, clock=lambda: now[0])

    async def run() -> list[float]:
        waits = [await limiter.take("a", "default") for _ in range(4)]
        waits.append(await limiter.take("b", "default"))  # another caller has its own bucket
        now[0] = 0.5
        waits.append(await limiter.take("a", "default"))
        return waits

    waits = asyncio.run(run())
    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(0.5)
    assert waits[4] == 0
    assert waits[5] == 0


def test_unknown_plan_falls_back_to_default() -> None:
    limiter = MemoryRateLimiter({"default": Plan(rate_per_s=1, burst=1)})
    assert asyncio.run(limiter.take("a", "gold")) == 0
    assert asyncio.run(limiter.take("a", "gold")) > 0
