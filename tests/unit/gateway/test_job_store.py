"""The job store contract: claims, leases, exactly-once finish, cancel, expiry.

Written against a ``make_store(result_ttl_s, lease_s)`` fixture: here the SQLite store; the
integration tests run the same functions against the Redis store and a real redis-server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlapi_gateway.jobs.store import JobStore

MakeStore = Callable[[float, float], Any]


@pytest.fixture
def make_store(tmp_path: Path) -> MakeStore:
    return lambda result_ttl_s, lease_s: JobStore(tmp_path / "jobs.db", result_ttl_s, lease_s)


def test_lifecycle_and_exactly_once_finish(make_store: MakeStore) -> None:
    async def run() -> None:
        store = make_store(60, 30)
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
        await store.close()

    asyncio.run(run())


def test_expired_lease_is_taken_over_and_resumes(make_store: MakeStore) -> None:
    async def run() -> None:
        crashed = make_store(60, 0.1)
        job = await crashed.create("k1", "digits", None, [{}, {}], "https://example.org/hook")
        await crashed.claim()
        await crashed.progress(job.id, [{"status": 200}])
        survivor = make_store(60, 30)
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
        await crashed.close()
        await survivor.close()

    asyncio.run(run())


def test_cancel_and_expiry(make_store: MakeStore) -> None:
    async def run() -> None:
        store = make_store(0.05, 30)
        job = await store.create("k1", "digits", None, [{}], None)
        assert await store.cancel(job.id)
        assert await store.claim() is None
        time.sleep(0.1)
        assert await store.get(job.id) is None
        await store.expire()
        assert await store.get(job.id) is None
        await store.close()

    asyncio.run(run())
