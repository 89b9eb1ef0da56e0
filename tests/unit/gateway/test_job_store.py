"""The job store contract: claims, leases, release, exactly-once finish, cancel, expiry.

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
        assert claimed.attempts == 1 and claimed.lease
        assert await store.claim() is None  # nobody else gets it while the lease holds
        assert await store.progress(claimed, [{"status": 200}])
        assert await store.finish(claimed, "succeeded", [{"status": 200}, {"status": 200}])
        assert not await store.finish(claimed, "succeeded", [])
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
        first = await crashed.claim()
        assert first is not None
        await crashed.progress(first, [{"status": 200}])
        survivor = make_store(60, 30)
        time.sleep(0.15)
        taken = await survivor.claim()
        assert taken is not None and taken.results == [{"status": 200}] and taken.attempts == 2
        assert not await crashed.progress(first, [{"status": 200}] * 2)  # the old claim lost it
        assert not await crashed.finish(first, "succeeded", [])
        assert await survivor.finish(taken, "succeeded", [{"status": 200}] * 2)
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


def test_each_claim_has_its_own_lease(make_store: MakeStore) -> None:
    """Two workers of one process share a store: an expired claim cannot act for the new one."""

    async def run() -> None:
        store = make_store(60, 0.1)
        await store.create("k1", "digits", None, [{}], None)
        old = await store.claim()
        time.sleep(0.15)
        new = await store.claim()
        assert old is not None and new is not None and old.id == new.id
        assert old.lease != new.lease
        assert not await store.renew(old)
        assert not await store.release(old)
        assert not await store.finish(old, "failed", [])
        assert await store.renew(new)
        assert await store.finish(new, "succeeded", [{"status": 200}])
        await store.close()

    asyncio.run(run())


def test_release_puts_the_job_back_with_its_progress(make_store: MakeStore) -> None:
    async def run() -> None:
        store = make_store(60, 30)
        job = await store.create("k1", "digits", None, [{}, {}], None)
        claimed = await store.claim()
        assert claimed is not None
        assert await store.progress(claimed, [{"status": 200}])
        assert await store.release(claimed)
        assert not await store.release(claimed)  # once
        queued = await store.get(job.id)
        assert queued is not None and queued.status == "queued" and queued.lease is None
        assert not await store.progress(claimed, [{"status": 200}] * 2)
        again = await store.claim()
        assert again is not None and again.id == job.id
        assert again.attempts == 2 and again.results == [{"status": 200}]
        assert await store.finish(again, "succeeded", [{"status": 200}] * 2)
        done = await store.get(job.id)
        assert done is not None and done.finish_count == 1
        await store.close()

    asyncio.run(run())


def test_cancel_stops_a_running_claim(make_store: MakeStore) -> None:
    async def run() -> None:
        store = make_store(60, 30)
        job = await store.create("k1", "digits", None, [{}], None)
        claimed = await store.claim()
        assert claimed is not None
        assert await store.cancel(job.id)
        assert not await store.renew(claimed)
        assert not await store.release(claimed)
        assert not await store.finish(claimed, "succeeded", [{"status": 200}])
        cancelled = await store.get(job.id)
        assert cancelled is not None and cancelled.status == "cancelled"
        assert cancelled.finish_count == 1
        await store.close()

    asyncio.run(run())


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    async def run() -> None:
        path = tmp_path / "state" / "jobs.db"
        store = JobStore(path, 60, 30)
        await store.create("k1", "digits", None, [{}], None)
        files = [path, path.with_name("jobs.db-wal"), path.with_name("jobs.db-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
            f.name: "0o600" for f in files
        }
        assert path.parent.stat().st_mode & 0o077 == 0
        await store.close()

    asyncio.run(run())


def test_an_existing_readable_database_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    asyncio.run(JobStore(path, 60, 30).close())
    assert path.stat().st_mode & 0o777 == 0o600
