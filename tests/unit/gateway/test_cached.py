"""Cached reads: one read per key at a time, stale values kept when a refresh fails or hangs,
failures remembered briefly, the first read bounded by the caller's wait."""

from __future__ import annotations

import asyncio

import pytest

from mlapi_gateway.upstream import Cached


class Source:
    """A value to read, counting reads; ``gate`` (when set) holds each read until opened."""

    def __init__(self) -> None:
        self.reads = 0
        self.value = "v1"
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def load(self) -> str:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


def test_concurrent_first_reads_share_one_read() -> None:
    async def main() -> None:
        cache, source = Cached(ttl_s=60), Source()
        source.gate = asyncio.Event()
        waiting = [asyncio.ensure_future(cache.get("k", source.load)) for _ in range(5)]
        await asyncio.sleep(0)
        source.gate.set()
        assert await asyncio.gather(*waiting) == ["v1"] * 5
        assert source.reads == 1

    asyncio.run(main())


def test_a_failed_refresh_keeps_the_stale_value_and_is_not_retried_at_once() -> None:
    async def main() -> None:
        cache, source = Cached(ttl_s=0, failure_ttl_s=60), Source()
        assert await cache.get("k", source.load) == "v1"
        source.error = ConnectionError("down")
        assert [await cache.get("k", source.load) for _ in range(10)] == ["v1"] * 10
        assert source.reads == 2  # the failure is remembered: one failed read, not ten

    asyncio.run(main())


def test_a_hanging_refresh_answers_stale_after_the_short_wait() -> None:
    async def main() -> None:
        cache, source = Cached(ttl_s=0, stale_wait_s=0.05), Source()
        assert await cache.get("k", source.load) == "v1"
        source.value, source.gate = "v2", asyncio.Event()
        assert await cache.get("k", source.load) == "v1"  # the read goes on meanwhile
        source.gate.set()
        while "k" in cache._reads:  # until the refresh has finished
            await asyncio.sleep(0.001)
        assert await cache.get("k", source.load) == "v2"

    asyncio.run(main())


def test_without_a_value_the_error_and_the_wait_are_the_callers() -> None:
    async def main() -> None:
        cache, source = Cached(ttl_s=60, failure_ttl_s=60), Source()
        source.error = ConnectionError("down")
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await cache.get("k", source.load)
        assert source.reads == 1
        hanging, never = Source(), asyncio.Event()
        hanging.gate = never
        with pytest.raises(TimeoutError):
            await cache.get("other", hanging.load, wait_s=0.05)
        never.set()
        assert await cache.get("other", hanging.load) == "v1"  # the one read finished
        assert hanging.reads == 1

    asyncio.run(main())
