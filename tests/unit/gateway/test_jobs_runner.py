"""The job runner's retry rules against a real SQLite store, with a scripted inference stand-in:
unavailable is retried within the budget, then the job is re-queued (not failed); 4xx is never
retried; failed inputs carry problem documents; a job claimed too often fails with 503s."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlapi_gateway import errors
from mlapi_gateway.jobs.runner import JobRunner
from mlapi_gateway.jobs.store import JobStore, StoreUnavailableError
from mlapi_gateway.problems import TYPE_BASE
from mlapi_gateway.settings import GatewaySettings

INPUT = {"inputs": {"delay_ms": [[1]]}}


class ScriptedInference:
    """Answers ``predict`` from a script: an exception to raise, or a body to return."""

    def __init__(self, script: Iterator[Exception | dict[str, Any]]) -> None:
        self.script = script
        self.calls = 0
        self.request_ids: list[str] = []

    def parse(self, model: str, raw: dict[str, Any]) -> dict[str, Any]:
        return raw

    async def predict(self, *args: Any) -> dict[str, Any]:
        self.calls += 1
        self.request_ids.append(args[-1])
        step = next(self.script)
        if isinstance(step, Exception):
            raise step
        return step


def unavailable() -> errors.UnavailableError:
    return errors.UnavailableError("model 'slow' cannot serve now (ConnectionFailedError)", 1)


def runner_for(tmp_path: Path, inference: ScriptedInference, **settings: Any) -> JobRunner:
    values: dict[str, Any] = {
        "jobs_db": tmp_path / "jobs.db",
        "jobs_retry_backoff_s": 0.01,
        "jobs_retry_backoff_max_s": 0.02,
        "webhook_secret": None,
        **settings,
    }
    config = GatewaySettings(**values)
    store = JobStore(config.jobs_db, 60, config.jobs_lease_s)
    return JobRunner(config, store, inference)  # type: ignore[arg-type]


async def run_one(runner: JobRunner, inputs: int = 1) -> str:
    store = runner.store
    job = await store.create("k1", "slow", None, [INPUT] * inputs, None)
    claimed = await store.claim()
    assert claimed is not None
    await runner.run(claimed)
    return job.id


def test_unavailable_is_retried_until_it_answers(tmp_path: Path) -> None:
    script = iter([unavailable(), unavailable(), unavailable(), {"outputs": 1}, {"outputs": 2}])
    inference = ScriptedInference(script)
    runner = runner_for(tmp_path, inference)

    async def run() -> None:
        job_id = await run_one(runner, inputs=2)
        job = await runner.store.get(job_id)
        assert job is not None and job.status == "succeeded" and job.finish_count == 1
        assert job.results == [
            {"status": 200, "body": {"outputs": 1}},
            {"status": 200, "body": {"outputs": 2}},
        ]
        assert inference.request_ids == [f"{job_id}.0"] * 4 + [f"{job_id}.1"]  # Triton's ids
        await runner.stop()
        await runner.store.close()

    asyncio.run(run())
    assert inference.calls == 5


def test_a_spent_budget_requeues_the_job_with_its_progress(tmp_path: Path) -> None:
    inference = ScriptedInference(iter([{"outputs": 1}, *(unavailable() for _ in range(10**6))]))
    runner = runner_for(tmp_path, inference, jobs_retry_budget_s=0.2)

    async def run() -> None:
        job_id = await run_one(runner, inputs=2)
        job = await runner.store.get(job_id)
        assert job is not None and job.status == "queued" and job.finish_count == 0
        assert job.results == [{"status": 200, "body": {"outputs": 1}}]
        again = await runner.store.claim()
        assert again is not None and again.id == job_id and again.attempts == 2
        await runner.stop()
        await runner.store.close()

    asyncio.run(run())
    assert inference.calls > 2


def test_client_errors_and_model_failures_are_not_retried(tmp_path: Path) -> None:
    invalid = errors.RequestInvalidError(
        "model 'slow' refused the input", [errors.FieldError("body.inputs.delay_ms", "too big")]
    )
    inference = ScriptedInference(iter([invalid, errors.ModelFailedError("model 'slow' failed")]))
    runner = runner_for(tmp_path, inference)

    async def run() -> None:
        job_id = await run_one(runner, inputs=2)
        job = await runner.store.get(job_id)
        assert job is not None and job.status == "failed" and job.finish_count == 1
        first, second = job.results
        assert first["status"] == 400 and second["status"] == 502
        assert first["problem"] == {
            "type": TYPE_BASE + "validation",
            "title": "Invalid request",
            "status": 400,
            "detail": "model 'slow' refused the input",
            "request_id": f"{job_id}.0",  # as an HTTP answer names its request
            "errors": [{"field": "body.inputs.delay_ms", "message": "too big"}],
        }
        assert second["problem"]["type"] == TYPE_BASE + "model-error"
        assert second["problem"]["request_id"] == f"{job_id}.1"
        assert {"type", "title", "status", "detail"} <= second["problem"].keys()
        await runner.stop()
        await runner.store.close()

    asyncio.run(run())
    assert inference.calls == 2


def test_a_job_claimed_too_often_fails_with_503_problems(tmp_path: Path) -> None:
    inference = ScriptedInference(iter([]))
    runner = runner_for(tmp_path, inference, jobs_max_attempts=2, jobs_lease_s=0.05)

    async def run() -> None:
        store = runner.store
        job = await store.create("k1", "slow", None, [INPUT] * 2, None)
        for _ in range(2):  # two workers that died holding it
            assert await store.claim() is not None
            await asyncio.sleep(0.1)
        third = await store.claim()
        assert third is not None and third.attempts == 3
        await runner.run(third)
        done = await store.get(job.id)
        assert done is not None and done.status == "failed" and done.finish_count == 1
        assert [r["status"] for r in done.results] == [503, 503]
        problem = done.results[0]["problem"]
        assert problem["type"] == TYPE_BASE + "unavailable"
        assert "started 2 times" in problem["detail"]
        assert [r["problem"]["request_id"] for r in done.results] == [f"{job.id}.0", f"{job.id}.1"]
        await runner.stop()
        await store.close()

    asyncio.run(run())
    assert inference.calls == 0


def test_a_cancelled_job_stops_retrying(tmp_path: Path) -> None:
    inference = ScriptedInference(unavailable() for _ in range(10**6))
    runner = runner_for(tmp_path, inference, jobs_lease_s=0.3, jobs_retry_budget_s=60)

    async def run() -> None:
        store = runner.store
        job = await store.create("k1", "slow", None, [INPUT], None)
        claimed = await store.claim()
        assert claimed is not None
        work = asyncio.create_task(runner.run(claimed))
        while inference.calls < 2:
            await asyncio.sleep(0.01)
        assert await store.cancel(job.id)
        await asyncio.wait_for(work, 30)  # the heartbeat sees the lease gone
        done = await store.get(job.id)
        assert done is not None and done.status == "cancelled" and done.finish_count == 1
        await runner.stop()
        await store.close()

    asyncio.run(run())


def test_start_warns_without_a_webhook_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = runner_for(tmp_path, ScriptedInference(iter([])), webhook_secret=None)

    async def run() -> None:
        runner.start()
        await runner.stop()
        await runner.store.close()

    asyncio.run(run())
    assert "MLAPI_GATEWAY_WEBHOOK_SECRET is not set" in caplog.text


def test_a_delivery_is_recorded_once_the_store_is_back(tmp_path: Path) -> None:
    """Unrecorded, the webhook would be claimed and sent again after its lease."""
    runner = runner_for(tmp_path, ScriptedInference(iter([])), jobs_poll_s=0.01)
    calls: list[tuple[str, bool]] = []

    async def flaky_done(job_id: str, delivered: bool, attempts: int, outcome: str) -> None:
        calls.append((job_id, delivered))
        if len(calls) < 3:
            raise StoreUnavailableError("Redis cannot be reached")

    runner.store.webhook_done = flaky_done  # type: ignore[method-assign]

    async def run() -> None:
        await runner._record_delivery("j1", True, 1, "200")
        await runner.stop()
        await runner.store.close()

    asyncio.run(run())
    assert calls == [("j1", True)] * 3
