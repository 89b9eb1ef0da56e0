"""The SQLite job store: claims, leases, exactly-once finish, cancel, expiry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mlapi_gateway.jobs.store import JobStore


def test_lifecycle_and_exactly_once_finish(tmp_path: Path) -> None:
    async def run() -> None:
        store = JobStore(tmp_path / "jobs.db", result_ttl_s=60, lease_s=30)
        job = await store.create("k1", "digits", None, [{"a": 1}, {"a": 2}], None)
        assert job.status == "queued" and job.view()["progress"] == {
            "done": 0,
            "total": 2,
            "failed": 0,
        }
        claimed = await store.claim()
        assert claimed is not None and claimed.id == job.id and claimed.status == "running"
        assert await store.claim() is None  # nobody else gets it while the lease holds
        assert await store.progress(job.id, [{"status": 200}])
        assert await store.finish(job.id, "succeeded", [{"status": 200}, {"status": 200}])
        assert not await store.finish(job.id, "succeeded", [])
        assert not await store.cancel(job.id)
        done = await store.get(job.id)
        assert done is not None and done.finish_count == 1 and done.status == "succeeded"
        assert done.view()["results"] == [{"status": 200}, {"status": 200}]
        store.close()

    asyncio.run(run())


def test_expired_lease_is_taken_over_and_resumes(tmp_path: Path) -> None:
    async def run() -> None:
        crashed = JobStore(tmp_path / "jobs.db", result_ttl_s=60, lease_s=0.1)
        job = await crashed.create("k1", "digits", None, [{}, {}], "https://example.org/hook")
        await crashed.claim()
        await crashed.progress(job.id, [{"status": 200}])
        survivor = JobStore(tmp_path / "jobs.db", result_ttl_s=60, lease_s=30)
        time.sleep(0.15)
        taken = await survivor.claim()
        assert taken is not None and taken.results == [{"status": 200}]
        assert not await crashed.finish(job.id, "succeeded", [])  # the old worker lost it
        assert await survivor.finish(job.id, "succeeded", [{"status": 200}] * 2)
        hook = await survivor.claim_webhook()
        assert hook is not None and hook.id == job.id
        assert await survivor.claim_webhook() is None
        await survivor.webhook_done(job.id, True, 1, "HTTP 204")
        final = await survivor.get(job.id)
        assert final is not None and final.finish_count == 1 and final.webhook_state == "delivered"
        crashed.close()
        survivor.close()

    asyncio.run(run())


def test_cancel_and_expiry(tmp_path: Path) -> None:
    async def run() -> None:
        store = JobStore(tmp_path / "jobs.db", result_ttl_s=0.05, lease_s=30)
        job = await store.create("k1", "digits", None, [{}], None)
        assert await store.cancel(job.id)
        assert await store.claim() is None
        time.sleep(0.1)
        assert await store.get(job.id) is None
        assert await store.expire() == 1
        store.close()

    asyncio.run(run())
