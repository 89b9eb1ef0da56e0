"""Where the exact cache keeps answers: this process's memory (LRU) or Redis (shared).

Values are the answers' JSON bytes: immutable, so concurrent requests can never share (and
mutate) one answer object, and their length is the size the bounds count.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger(__name__)


class AnswerStore(Protocol):
    """Bytes by key with a time to live; a failing store behaves as an empty one."""

    async def get(self, key: str) -> tuple[bytes, float] | None:
        """Return the value of ``key`` and its age in seconds, or None."""
        ...

    async def put(self, key: str, value: bytes) -> None:
        """Keep ``value`` under ``key`` for the store's time to live."""
        ...

    async def clear(self, prefix: str) -> None:
        """Drop the entries whose key starts with ``prefix`` (where the store can)."""
        ...

    def size(self) -> tuple[int, int]:
        """Return (entries, bytes) held here; (0, 0) where the store cannot count cheaply."""
        ...

    async def close(self) -> None:
        """Release the store's connections."""
        ...


class MemoryStore:
    """An LRU of at most ``max_entries`` values and ``max_bytes`` bytes, each kept ``ttl_s``."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    async def get(self, key: str) -> tuple[bytes, float] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        age_s = time.monotonic() - entry[0]
        if age_s >= self.ttl_s:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1], age_s

    async def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic(), value)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def clear(self, prefix: str) -> None:
        for key in [k for k in self._entries if k.startswith(prefix)]:
            self._drop(key)

    def size(self) -> tuple[int, int]:
        return len(self._entries), self._bytes

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self._bytes -= len(value)


class RedisStore:
    """Values in Redis under ``mlapi:cache:<key>`` with a TTL, shared by every replica.

    Redis bounds the memory (its ``maxmemory`` with an LRU eviction policy); one value over
    ``max_value_bytes`` is not stored. A Redis that fails or is slow counts as a miss (logged
    at most once a minute): the cache never fails a request.
    """

    PREFIX = "mlapi:cache:"

    def __init__(
        self, url: str, ttl_s: float, max_value_bytes: int, timeout_s: float = 0.25
    ) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_value_bytes = max_value_bytes
        self._warned_at = -1e9

    async def get(self, key: str) -> tuple[bytes, float] | None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(self.PREFIX + key)
                pipe.pttl(self.PREFIX + key)
                value, left_ms = await pipe.execute()
        except Exception as exc:  # any Redis failure is a miss, never the request's error
            self._warn(exc)
            return None
        if value is None:
            return None
        return bytes(value), max(0.0, (self.ttl_ms - max(0, int(left_ms))) / 1000)

    async def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_value_bytes:
            return
        try:
            await self._redis.set(self.PREFIX + key, value, px=self.ttl_ms)
        except Exception as exc:
            self._warn(exc)

    async def clear(self, prefix: str) -> None:
        # Old generations are unreachable (their keys name the old policy) and expire by TTL;
        # scanning a shared Redis on every policy change would cost every replica.
        return None

    def size(self) -> tuple[int, int]:
        return 0, 0

    async def close(self) -> None:
        await self._redis.aclose()

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60:
            self._warned_at = now
            log.warning(
                "exact cache: Redis failed (%s: %s); serving misses", type(exc).__name__, exc
            )
