"""What one gateway process holds for its lifetime (built at startup, closed at shutdown)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from fastapi import Request

from mlapi_gateway import errors
from mlapi_gateway.auth import Gatekeeper
from mlapi_gateway.inference import Inference
from mlapi_gateway.jobs.redis_store import RedisJobStore
from mlapi_gateway.jobs.runner import JobRunner
from mlapi_gateway.jobs.store import JobStore
from mlapi_gateway.keys import KeyStore
from mlapi_gateway.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter, StreamSlots
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.upstream import TritonClient

JobBackend = JobStore | RedisJobStore

log = logging.getLogger("mlapi_gateway")


@dataclass
class Services:
    """What the routes and the job runner share: settings, auth, limits, inference, jobs."""

    settings: GatewaySettings
    gate: Gatekeeper
    limiter: RateLimiter
    inference: Inference
    jobs: JobBackend
    runner: JobRunner
    streams: StreamSlots

    @classmethod
    def build(cls, settings: GatewaySettings, client: TritonClient | None = None) -> Services:
        """Build the services of ``settings``; ``client`` replaces the Triton clients (tests)."""
        if settings.auth_mode == "open":
            log.warning(
                "\n%s\nAUTHENTICATION IS OFF (MLAPI_GATEWAY_AUTH_MODE=open): every caller gets every "
                "scope. Use this for local work only.\n%s",
                "!" * 78,
                "!" * 78,
            )
        keys = KeyStore(settings.keys_file, settings.keys_json, settings.keys_reload_interval_s)
        limiter: RateLimiter
        if settings.redis_url:
            limiter = RedisRateLimiter(settings.redis_url, settings.plans)
        else:
            limiter = MemoryRateLimiter(settings.plans)
        inference = Inference(settings, client)
        jobs: JobBackend
        if settings.jobs_store == "redis":
            assert settings.redis_url is not None
            jobs = RedisJobStore(
                settings.redis_url, settings.jobs_result_ttl_s, settings.jobs_lease_s
            )
        else:
            jobs = JobStore(settings.jobs_db, settings.jobs_result_ttl_s, settings.jobs_lease_s)
        runner = JobRunner(settings, jobs, inference)
        streams = StreamSlots(settings.max_streams_per_key, settings.retry_after_s)
        gate = Gatekeeper(settings, keys, limiter)
        return cls(settings, gate, limiter, inference, jobs, runner, streams)

    async def close(self) -> None:
        await self.runner.stop()
        await self.inference.close()
        await self.limiter.close()
        await self.jobs.close()


def services(request: Request) -> Services:
    """Return the services of the app serving ``request``."""
    return request.app.state.services  # type: ignore[no-any-return]


async def read_body(request: Request, limit_bytes: int | None = None) -> bytes:
    """Return the request body, refused while it is too large or too slow.

    413 once it passes ``limit_bytes`` (default ``max_body_bytes``; declared or counted, never
    read further), 408 while still arriving ``body_timeout_s`` after reading began (the guard
    middleware then closes the connection: the rest is never read).
    """
    settings = services(request).settings
    limit_bytes = limit_bytes or settings.max_body_bytes

    def too_large(size: str) -> errors.BodyTooLargeError:
        return errors.BodyTooLargeError(
            "the request body is too large",
            [errors.FieldError("body", f"{size} bytes", f"at most {limit_bytes} bytes")],
        )

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise too_large(declared)
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit_bytes:
                    raise too_large(f"more than {limit_bytes}")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise errors.BodyTimeoutError(
            f"the request body did not arrive within {settings.body_timeout_s:g} s "
            f"({size} bytes came); send it at once"
        ) from exc
    request.state.body_bytes = (
        size  # the input_size label of mlapi_gateway_predict_duration_seconds
    )
    return b"".join(chunks)
