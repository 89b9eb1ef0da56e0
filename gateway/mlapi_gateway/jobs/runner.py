"""The background worker of one gateway process: runs claimed jobs, delivers webhooks, expires
old results. Several processes may run it against the same store."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any

import httpx
import orjson

from mlapi_gateway import errors
from mlapi_gateway.inference import Inference, parse_body
from mlapi_gateway.jobs.redis_store import RedisJobStore
from mlapi_gateway.jobs.store import Job, JobStore
from mlapi_gateway.metrics import JOBS, WEBHOOKS
from mlapi_gateway.problems import status_of
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.webhooks import Network, deliver

log = logging.getLogger(__name__)
UNAVAILABLE_RETRIES = 3


def problem_dict(error: errors.GatewayError) -> dict[str, Any]:
    out: dict[str, Any] = {"title": error.title, "status": status_of(error), "detail": error.detail}
    if isinstance(error, errors.RequestInvalid):
        out["errors"] = [e.to_dict() for e in error.errors]
    return out


class JobRunner:
    def __init__(
        self, settings: GatewaySettings, store: JobStore | RedisJobStore, inference: Inference
    ) -> None:
        self.settings = settings
        self.store = store
        self.inference = inference
        self.allow: list[Network] = [
            ipaddress.ip_network(n, strict=False) for n in settings.webhook_allow
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._http = httpx.AsyncClient(timeout=settings.webhook_timeout_s, follow_redirects=False)

    def start(self) -> None:
        for _ in range(self.settings.jobs_concurrency):
            self._tasks.append(asyncio.create_task(self._jobs_loop()))
        self._tasks.append(asyncio.create_task(self._webhooks_loop()))
        self._tasks.append(asyncio.create_task(self._expiry_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()

    async def _jobs_loop(self) -> None:
        while True:
            try:
                job = await self.store.claim()
                if job is None:
                    await asyncio.sleep(self.settings.jobs_poll_s)
                    continue
                await self.run(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the worker alive; the job's lease lets another take it
                log.exception("job worker error")
                await asyncio.sleep(self.settings.jobs_poll_s)

    async def run(self, job: Job) -> None:
        results = list(job.results)  # a resumed job continues after its last finished input
        heartbeat = asyncio.create_task(self._renew(job.id))
        try:
            for body in job.inputs[len(results) :]:
                results.append(await self._one(job, body))
                if not await self.store.progress(job.id, results):
                    log.info("job %s was cancelled or taken over; stopping", job.id)
                    return
        finally:
            heartbeat.cancel()
        failed = any(r["status"] >= 400 for r in results)
        status = "failed" if failed else "succeeded"
        if await self.store.finish(job.id, status, results):
            JOBS.labels(status).inc()

    async def _one(self, job: Job, raw: dict[str, Any]) -> dict[str, Any]:
        timeout_s = min(self.settings.jobs_item_timeout_s, self.settings.deadline_max_s)
        for attempt in range(UNAVAILABLE_RETRIES + 1):
            try:
                body = parse_body(job.model, raw)
                return {
                    "status": 200,
                    "body": await self.inference.predict(job.model, body, job.version, timeout_s),
                }
            except errors.Unavailable as exc:
                if attempt == UNAVAILABLE_RETRIES:
                    return {"status": status_of(exc), "problem": problem_dict(exc)}
                await asyncio.sleep(exc.retry_after_s)
            except errors.GatewayError as exc:
                return {"status": status_of(exc), "problem": problem_dict(exc)}
        raise AssertionError("unreachable")

    async def _renew(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self.settings.jobs_lease_s / 3)
            await self.store.renew(job_id)

    async def _webhooks_loop(self) -> None:
        while True:
            try:
                job = await self.store.claim_webhook()
                if job is None:
                    await asyncio.sleep(self.settings.jobs_poll_s)
                    continue
                assert job.webhook_url is not None
                body = orjson.dumps(job.view())
                delivered, attempts, outcome = await deliver(
                    self._http, job.webhook_url, body, self.settings.webhook_secret, self.allow,
                    int(time.time()), self.settings.webhook_max_attempts, self.settings.webhook_backoff_s,
                )  # fmt: skip
                WEBHOOKS.labels("delivered" if delivered else "failed").inc()
                await self.store.webhook_done(job.id, delivered, attempts, outcome)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook worker error")
                await asyncio.sleep(self.settings.jobs_poll_s)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(60.0, self.settings.jobs_result_ttl_s / 2)))
            with contextlib.suppress(Exception):
                removed = await self.store.expire()
                if removed:
                    log.info("expired %d finished jobs", removed)
