"""The background worker of one gateway process.

It runs claimed jobs, delivers webhooks and expires old results. Several processes may run it
against the same store.

An input that finds Triton unavailable waits and retries (exponential backoff with jitter) for
up to ``jobs_retry_budget_s``, longer than a Triton restart; a job that still cannot go on is
released back to the queue, never failed for it, until it has been claimed
``jobs_max_attempts`` times. Client errors (4xx) and model failures are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from typing import Any

import orjson

from mlapi_gateway import errors, webhooks
from mlapi_gateway.inference import Inference
from mlapi_gateway.jobs.redis_store import RedisJobStore
from mlapi_gateway.jobs.store import Job, JobStore, StoreUnavailableError
from mlapi_gateway.metrics import JOBS, WEBHOOKS
from mlapi_gateway.problems import log_server_error, problem_body
from mlapi_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
STORE_BACKOFF_MAX_S = 5.0


def result_of(error: errors.GatewayError, request_id: str | None = None) -> dict[str, Any]:
    """Return an input's failed result: its status and the problem an HTTP answer would carry.

    ``request_id`` (``<job id>.<input index>``) is the id Triton saw for that input.
    """
    problem = problem_body(error, None, request_id)
    return {"status": problem["status"], "problem": problem}


class _JobStopError(Exception):
    """This worker gives the job up: its lease is lost, or Triton stayed away too long."""

    def __init__(self, requeue: bool) -> None:
        super().__init__()
        self.requeue = requeue


class JobRunner:
    """Runs the jobs of a store with ``jobs_concurrency`` workers, plus webhooks and expiry."""

    def __init__(
        self, settings: GatewaySettings, store: JobStore | RedisJobStore, inference: Inference
    ) -> None:
        self.settings = settings
        self.store = store
        self.inference = inference
        self.allow: list[webhooks.Network] = [
            ipaddress.ip_network(n, strict=False) for n in settings.webhook_allow
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._http = webhooks.client(self.allow, settings.webhook_timeout_s)
        self._store_down_since: float | None = None

    def start(self) -> None:
        if not self.settings.webhook_secret:
            log.warning(
                "MLAPI_GATEWAY_WEBHOOK_SECRET is not set: jobs asking for a webhook_url are "
                "refused (400); jobs without one run as usual"
            )
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

    # --- jobs ----------------------------------------------------------------------------

    async def _jobs_loop(self) -> None:
        while True:
            try:
                job = await self.store.claim()
                self._store_back()
                if job is None:
                    await asyncio.sleep(self.settings.jobs_poll_s)
                    continue
                await self.run(job)
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as exc:
                await asyncio.sleep(self._store_down(exc))
            except Exception:  # keep the worker alive; the job's lease lets another take it
                log.exception("job worker error")
                await asyncio.sleep(self.settings.jobs_poll_s)

    def _store_down(self, exc: StoreUnavailableError) -> float:
        """Log an outage once; the pause before the next try (grows up to a few seconds)."""
        now = time.monotonic()
        if self._store_down_since is None:
            self._store_down_since = now
            log.warning("job store unavailable, jobs pause until it is back: %s", exc)
        return min(STORE_BACKOFF_MAX_S, self.settings.jobs_poll_s + (now - self._store_down_since))

    def _store_back(self) -> None:
        if self._store_down_since is not None:
            log.warning("job store back after %.1fs", time.monotonic() - self._store_down_since)
            self._store_down_since = None

    async def run(self, job: Job) -> None:
        """Run ``job`` from its first unfinished input; finish, release or abandon it."""
        if job.attempts > self.settings.jobs_max_attempts:
            await self._give_up(job)
            return
        lost = asyncio.Event()
        heartbeat = asyncio.create_task(self._renew(job, lost))
        try:
            results = list(job.results)  # a resumed job continues after its last finished input
            for body in job.inputs[len(results) :]:
                results.append(await self._one(job, body, lost, f"{job.id}.{len(results)}"))
                if not await self.store.progress(job, results):
                    raise _JobStopError(requeue=False)
        except _JobStopError as stop:
            if stop.requeue and await self.store.release(job):
                log.warning("job %s: Triton unavailable too long; back in the queue", job.id)
            else:
                log.info("job %s was cancelled or taken over; stopping", job.id)
            return
        except asyncio.CancelledError:  # the gateway stops: hand the job back at once
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(job))
            raise
        finally:
            heartbeat.cancel()
        failed = any(r["status"] >= 400 for r in results)
        status = "failed" if failed else "succeeded"
        if await self.store.finish(job, status, results):
            JOBS.labels(status).inc()

    async def _give_up(self, job: Job) -> None:
        attempts = self.settings.jobs_max_attempts
        error = errors.UnavailableError(
            f"the job was started {attempts} times without finishing (Triton unavailable, or "
            "the gateway stopped); its remaining inputs were not run",
            self.settings.retry_after_s,
        )
        results = list(job.results) + [
            result_of(error, f"{job.id}.{index}") for index in range(len(job.results), job.total)
        ]
        if await self.store.finish(job, "failed", results):
            JOBS.labels("failed").inc()
            log.warning("job %s failed after %d attempts", job.id, attempts)

    async def _one(
        self, job: Job, raw: dict[str, Any], lost: asyncio.Event, request_id: str
    ) -> dict[str, Any]:
        """Return one input's result, retrying while Triton is unavailable, within the budget.

        ``request_id`` (``<job id>.<input index>``) is the id Triton sees for it.
        """
        settings = self.settings
        timeout_s = min(settings.jobs_item_timeout_s, settings.deadline_max_s)
        budget_ends = time.monotonic() + settings.jobs_retry_budget_s
        delay = settings.jobs_retry_backoff_s
        while True:
            if lost.is_set():
                raise _JobStopError(requeue=False)
            try:
                body = self.inference.parse(job.model, raw)
                prediction = await self.inference.predict(
                    job.model, body, job.version, timeout_s, request_id
                )
                return {"status": 200, "body": prediction}
            except errors.UnavailableError as exc:
                remaining = budget_ends - time.monotonic()
                if remaining <= 0:
                    raise _JobStopError(requeue=True) from exc
                pause = min(random.uniform(delay / 2, delay), remaining)
                if delay == settings.jobs_retry_backoff_s:  # the first retry of this input
                    log.warning(
                        "job %s: %s; retrying for up to %gs",
                        job.id, exc.detail, settings.jobs_retry_budget_s,
                    )  # fmt: skip
                log.info("job %s: retrying in %.1fs", job.id, pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), pause)
                delay = min(delay * 2, settings.jobs_retry_backoff_max_s)
            except errors.GatewayError as exc:
                log_server_error(exc, request_id, f"job {job.id} ({job.model})")
                return result_of(exc, request_id)

    async def _renew(self, job: Job, lost: asyncio.Event) -> None:
        """Keep the lease while the job runs; set ``lost`` once another owns it or it ended."""
        while True:
            await asyncio.sleep(self.settings.jobs_lease_s / 3)
            try:
                if not await self.store.renew(job):
                    lost.set()
                    return
            except StoreUnavailableError as exc:
                log.warning("job %s: cannot renew its lease: %s", job.id, exc)

    # --- webhooks and expiry -------------------------------------------------------------

    async def _webhooks_loop(self) -> None:
        while True:
            try:
                job = await self.store.claim_webhook()
                if job is None:
                    await asyncio.sleep(self.settings.jobs_poll_s)
                    continue
                await self._deliver(job)
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError:
                await asyncio.sleep(STORE_BACKOFF_MAX_S)
            except Exception:
                log.exception("webhook worker error")
                await asyncio.sleep(self.settings.jobs_poll_s)

    async def _deliver(self, job: Job) -> None:
        assert job.webhook_url is not None
        secret = self.settings.webhook_secret
        if not secret:  # submitted while a secret was set; nothing to sign with now
            await self.store.webhook_done(job.id, False, 0, "no webhook secret is configured")
            WEBHOOKS.labels("failed").inc()
            return
        delivered, attempts, outcome = await webhooks.deliver(
            self._http, job.webhook_url, orjson.dumps(job.view()), secret, int(time.time()),
            self.settings.webhook_max_attempts, self.settings.webhook_backoff_s,
            self.settings.webhook_max_redirects,
        )  # fmt: skip
        WEBHOOKS.labels("delivered" if delivered else "failed").inc()
        await self._record_delivery(job.id, delivered, attempts, outcome)

    async def _record_delivery(
        self, job_id: str, delivered: bool, attempts: int, outcome: str
    ) -> None:
        """Record a delivery, waiting out a store outage.

        Left unrecorded, the webhook would be claimed and sent again once its delivery lease
        ends (delivery stays at least once only if the outage outlasts that lease).
        """
        pause = self.settings.jobs_poll_s
        while True:
            try:
                await self.store.webhook_done(job_id, delivered, attempts, outcome)
                return
            except StoreUnavailableError as exc:
                log.warning("job %s: cannot record its webhook delivery yet: %s", job_id, exc)
                await asyncio.sleep(pause)
                pause = min(STORE_BACKOFF_MAX_S, pause * 2)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(60.0, self.settings.jobs_result_ttl_s / 2)))
            with contextlib.suppress(Exception):
                removed = await self.store.expire()
                if removed:
                    log.info("expired %d finished jobs", removed)
