"""Jobs in Redis, for replicas on several hosts: the same contract as the SQLite JobStore.

A job is a hash ``<prefix>job:<id>``; sorted sets index queued jobs (by creation time), running
jobs (by lease expiry) and pending webhooks (by delivery lease). Every state change is one Lua
script, so claims, lease checks and the exactly-once finish are atomic across replicas. Finished
jobs get a Redis expiry at ``expires_at``. Single Redis instance (the scripts touch keys they
compute, which Redis Cluster does not allow). Each claim writes its own lease token, and
progress, renewal, release and finish check it. Redis being unreachable surfaces as
``StoreUnavailableError``; persistence across a Redis restart is Redis's own (AOF or RDB).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from mlapi_gateway.jobs.store import Job, StoreUnavailableError

_CLAIM = """
local now, lease, worker, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local id = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if id then
  redis.call('ZREM', KEYS[1], id)
else
  id = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1)[1]
  if not id then return false end
end
local key = prefix .. 'job:' .. id
redis.call('ZADD', KEYS[2], now + lease, id)
redis.call('HSET', key, 'status', 'running', 'lease_owner', worker, 'lease_until', now + lease)
if redis.call('HGET', key, 'started_at') == false then redis.call('HSET', key, 'started_at', now) end
redis.call('HINCRBY', key, 'attempts', 1)
return id
"""

# KEYS: job hash, running set. ARGV: worker, now, lease, results or ''.
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[1] then
  return 0
end
local expiry = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lease_until', expiry)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'results', ARGV[4]) end
redis.call('ZADD', KEYS[2], expiry, ARGV[5])
return 1
"""

# KEYS: job hash, queue, running, webhooks. ARGV: id, new status, results or '', now, ttl,
# required owner ('' = any), allowed statuses (comma separated).
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(',' .. ARGV[7] .. ',', ',' .. status .. ',', 1, true) then return 0 end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[6] then return 0 end
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', now, 'expires_at', now + ttl, 'lease_owner', '')
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'results', ARGV[3]) end
redis.call('HINCRBY', KEYS[1], 'finish_count', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'webhook_url') ~= '' then
  redis.call('HSET', KEYS[1], 'webhook_state', 'pending')
  redis.call('ZADD', KEYS[4], 0, ARGV[1])
end
redis.call('PEXPIREAT', KEYS[1], math.ceil((now + ttl) * 1000))
return 1
"""

# KEYS: job hash, queue, running. ARGV: id, owner.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'lease_owner', '', 'lease_until', '')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], tonumber(redis.call('HGET', KEYS[1], 'created_at')), ARGV[1])
return 1
"""

_CLAIM_WEBHOOK = """
local id = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)[1]
if not id then return false end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
return id
"""


class RedisJobStore:
    """The job store in Redis, for replicas on several hosts (same contract as JobStore)."""

    def __init__(
        self, url: str, result_ttl_s: float, lease_s: float, prefix: str = "mlapi:"
    ) -> None:
        import redis.asyncio as redis

        self.result_ttl_s = result_ttl_s
        self.lease_s = lease_s
        self.worker_id = uuid.uuid4().hex
        self.prefix = prefix
        self._redis = redis.from_url(url, decode_responses=True)
        self._queue, self._running, self._webhooks = (
            f"{prefix}jobs:{n}" for n in ("queue", "running", "webhooks")
        )
        self._claim = self._redis.register_script(_CLAIM)
        self._progress = self._redis.register_script(_PROGRESS)
        self._finish = self._redis.register_script(_FINISH)
        self._claim_webhook = self._redis.register_script(_CLAIM_WEBHOOK)
        self._release = self._redis.register_script(_RELEASE)
        self._errors: tuple[type[Exception], ...] = (
            redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
        )  # fmt: skip

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StoreUnavailableError(f"Redis cannot be reached: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()

    async def create(
        self,
        owner: str,
        model: str,
        version: str | None,
        inputs: list[dict[str, Any]],
        webhook_url: str | None,
    ) -> Job:
        job_id = uuid.uuid4().hex
        now = time.time()
        fields: dict[Any, Any] = {
            "id": job_id, "owner": owner, "model": model, "version": version or "", "status": "queued",
            "inputs": json.dumps(inputs), "results": "[]", "total": len(inputs), "created_at": now,
            "finish_count": 0, "webhook_url": webhook_url or "", "webhook_state": "none",
            "webhook_attempts": 0, "webhook_outcome": "", "finished_at": "", "expires_at": "",
        }  # fmt: skip
        with self._reachable():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(job_id), mapping=fields)
                pipe.zadd(self._queue, {job_id: now})
                await pipe.execute()
        job = await self.get(job_id)
        assert job is not None
        return job

    async def get(self, job_id: str) -> Job | None:
        with self._reachable():
            raw: dict[str, str] = await self._redis.hgetall(self._key(job_id))  # type: ignore[assignment]
        if not raw:
            return None

        def number(name: str) -> float | None:
            return float(raw[name]) if raw.get(name) else None

        row: dict[str, Any] = {
            **raw,
            "version": raw.get("version") or None,
            "total": int(raw["total"]),
            "created_at": float(raw["created_at"]),
            "finished_at": number("finished_at"),
            "expires_at": number("expires_at"),
            "webhook_url": raw.get("webhook_url") or None,
            "webhook_attempts": int(raw.get("webhook_attempts", 0)),
            "webhook_outcome": raw.get("webhook_outcome") or None,
            "finish_count": int(raw.get("finish_count", 0)),
            "attempts": int(raw.get("attempts", 0)),
            "lease_owner": raw.get("lease_owner") or None,
        }
        job = Job.from_row(row)
        if job.expires_at is not None and job.expires_at < time.time():
            return None
        return job

    async def claim(self) -> Job | None:
        token = f"{self.worker_id}.{uuid.uuid4().hex[:12]}"
        with self._reachable():
            job_id = await self._claim(
                keys=[self._queue, self._running],
                args=[time.time(), self.lease_s, token, self.prefix],
            )
        return await self.get(job_id) if job_id else None

    async def progress(self, job: Job, results: list[dict[str, Any]]) -> bool:
        return await self._lease(job, json.dumps(results))

    async def renew(self, job: Job) -> bool:
        return await self._lease(job, "")

    async def _lease(self, job: Job, results: str) -> bool:
        with self._reachable():
            done = await self._progress(
                keys=[self._key(job.id), self._running],
                args=[job.lease or "", time.time(), self.lease_s, results, job.id],
            )
        return bool(done)

    async def release(self, job: Job) -> bool:
        with self._reachable():
            done = await self._release(
                keys=[self._key(job.id), self._queue, self._running], args=[job.id, job.lease or ""]
            )
        return bool(done)

    async def finish(self, job: Job, status: str, results: list[dict[str, Any]]) -> bool:
        return await self._end(job.id, status, json.dumps(results), job.lease or "-", "running")

    async def cancel(self, job_id: str) -> bool:
        return await self._end(job_id, "cancelled", "", "", "queued,running")

    async def _end(self, job_id: str, status: str, results: str, owner: str, allowed: str) -> bool:
        with self._reachable():
            done = await self._finish(
                keys=[self._key(job_id), self._queue, self._running, self._webhooks],
                args=[job_id, status, results, time.time(), self.result_ttl_s, owner, allowed],
            )
        return bool(done)

    async def claim_webhook(self) -> Job | None:
        with self._reachable():
            job_id = await self._claim_webhook(
                keys=[self._webhooks], args=[time.time(), self.lease_s * 20]
            )
        return await self.get(job_id) if job_id else None

    async def webhook_done(self, job_id: str, delivered: bool, attempts: int, outcome: str) -> None:
        with self._reachable():
            if not await self._redis.exists(self._key(job_id)):  # expired: do not recreate
                await self._redis.zrem(self._webhooks, job_id)
                return
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(
                    self._key(job_id),
                    mapping={
                        "webhook_state": "delivered" if delivered else "failed",
                        "webhook_outcome": outcome,
                    },
                )
                pipe.hincrby(self._key(job_id), "webhook_attempts", attempts)
                pipe.zrem(self._webhooks, job_id)
                await pipe.execute()

    async def expire(self) -> int:
        return 0  # finished jobs carry a Redis expiry
