"""Jobs under faults, against real processes: the gateway SIGKILLed or stopped with jobs running
and queued, Triton SIGKILLed and restarted under the gateway, Redis stopped and restarted under
the Redis job store. Every job still finishes exactly once, with exactly one webhook."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from mlapi_client import access
from mlapi_tools.local.triton_process import Ports, TritonServer

from ..conftest import TEST_REPOSITORY
from .conftest import gateway_env
from .harness import Gateway, RedisServer, WebhookReceiver, create_key, free_port, wait_for
from .test_jobs import FINAL, _slow, _wait_final

JOBS = 4
INPUTS = 3
log = logging.getLogger(__name__)


def _submit(client: httpx.Client, receiver: WebhookReceiver, delay_ms: int = 300) -> list[str]:
    body = {"model": "slow", "inputs": [_slow(delay_ms)] * INPUTS, "webhook_url": receiver.url}
    replies = [client.post("/v1/jobs", json=body) for _ in range(JOBS)]
    assert all(r.status_code == 202 for r in replies), [r.text for r in replies]
    return [r.json()["id"] for r in replies]


def _running_with_progress(client: httpx.Client, ids: list[str]) -> bool:
    jobs = [client.get(f"/v1/jobs/{i}").json() for i in ids]
    return any(j["status"] == "running" and j["progress"]["done"] >= 1 for j in jobs)


def _all_delivered(client: httpx.Client, ids: list[str], receiver: WebhookReceiver) -> None:
    """Every job succeeded with every input, its webhook delivered once and signed."""
    jobs = [_wait_final(client, i, timeout_s=120) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * JOBS, jobs
    assert all([r["status"] for r in j["results"]] == [200] * INPUTS for j in jobs)

    def delivered() -> list[dict] | None:
        views = [client.get(f"/v1/jobs/{i}").json() for i in ids]
        return views if all(v["webhook"]["state"] == "delivered" for v in views) else None

    views = wait_for(delivered, timeout_s=60)
    # Delivery state is final now: no second delivery can still be under way.
    assert sorted(d.body["id"] for d in receiver.deliveries) == sorted(ids)
    assert all(d.signature_ok and d.body["status"] == "succeeded" for d in receiver.deliveries)
    assert [v["webhook"]["attempts"] for v in views] == [1] * JOBS


def _sqlite_finishes(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as db:
        return dict(db.execute("SELECT id, finish_count FROM jobs").fetchall())


def _redis_finishes(url: str, ids: list[str]) -> dict[str, int]:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        return {i: int(redis.hget(f"mlapi:job:{i}", "finish_count") or 0) for i in ids}
    finally:
        redis.close()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_gateway_crash_with_running_and_queued_jobs_loses_nothing(
    triton: TritonServer, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(triton, tmp_path, jobs_lease_s=2, jobs_store=store)
    if store == "redis":
        env["MLAPI_GATEWAY_REDIS_URL"] = request.getfixturevalue("redis_server").url
    headers = {"Authorization": f"Bearer {key}"}
    first = Gateway(env, tmp_path / "first.log").start()
    with WebhookReceiver() as receiver:
        try:
            with httpx.Client(base_url=first.url, headers=headers) as client:
                ids = _submit(client, receiver)
                wait_for(lambda: _running_with_progress(client, ids), 30, 0.02)
        finally:
            first.kill()  # a crash: one job part-done, the others queued
        second = Gateway(env, tmp_path / "second.log").start()
        try:
            with httpx.Client(base_url=second.url, headers=headers) as client:
                _all_delivered(client, ids, receiver)
        finally:
            second.stop()
    if store == "sqlite":
        finishes = _sqlite_finishes(tmp_path / "jobs.sqlite3")
    else:
        finishes = _redis_finishes(env["MLAPI_GATEWAY_REDIS_URL"], ids)
    assert finishes == dict.fromkeys(ids, 1)


def test_a_stopping_gateway_hands_its_running_job_back(
    triton: TritonServer, tmp_path: Path
) -> None:
    """SIGTERM releases the job at once: the next gateway need not wait for a 600 s lease."""
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(triton, tmp_path, jobs_lease_s=600)
    headers = {"Authorization": f"Bearer {key}"}
    first = Gateway(env, tmp_path / "first.log").start()
    with WebhookReceiver() as receiver:
        with httpx.Client(base_url=first.url, headers=headers) as client:
            ids = _submit(client, receiver)
            wait_for(lambda: _running_with_progress(client, ids), 30, 0.02)
        assert first.stop() == 0, first.log()
        second = Gateway(env, tmp_path / "second.log").start()
        try:
            with httpx.Client(base_url=second.url, headers=headers) as client:
                _all_delivered(client, ids, receiver)  # within 120 s, long before the lease ends
        finally:
            second.stop()
    assert _sqlite_finishes(tmp_path / "jobs.sqlite3") == dict.fromkeys(ids, 1)


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonServer]:
    """A restricted tritonserver of this test's own with the test models, on free ports."""
    server = TritonServer(
        [TEST_REPOSITORY],
        backend_dir=tmp_path / "backends",
        ports=Ports.free(),
        exit_timeout_s=5,
        die_with_parent=True,
        access_key=access.read_key(),
    )
    yield server
    server.stop()


def _start(server: TritonServer, log_path: Path) -> float:
    """Start ``server`` and wait until ``slow`` is ready; the seconds that took."""
    began = time.monotonic()
    with log_path.open("ab") as log_file:
        server.start(log_file)
    try:
        server.wait_ready(timeout_s=120, models=["slow"])
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}\n--- tritonserver log ---\n{log_path.read_text()[-4000:]}")
    return time.monotonic() - began


def test_jobs_survive_a_triton_restart(own_triton: TritonServer, tmp_path: Path) -> None:
    """Triton SIGKILLed under running and queued jobs, down for longer than the old 15 s of
    item retries, then restarted on the same ports: every job succeeds, once, one webhook."""
    log_path = tmp_path / "tritonserver.log"
    _start(own_triton, log_path)
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(
        own_triton, tmp_path, jobs_concurrency=2, jobs_lease_s=3, jobs_retry_backoff_max_s=2
    )
    env["MLAPI_GATEWAY_MODELS"] = json.dumps(["slow"])
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with (
            WebhookReceiver() as receiver,
            httpx.Client(base_url=gateway.url, headers=headers) as client,
        ):
            ids = _submit(client, receiver)
            wait_for(lambda: _running_with_progress(client, ids), 30, 0.02)
            assert own_triton.process is not None
            os.killpg(own_triton.process.pid, signal.SIGKILL)  # the server and its stubs
            killed = time.monotonic()
            own_triton.stop()  # reaps it
            # Down for 20 s (longer than the old 15 s of retries), checking all along that no
            # job gives up meanwhile.
            while time.monotonic() - killed < 20:
                states = {client.get(f"/v1/jobs/{i}").json()["status"] for i in ids}
                assert not states & FINAL, states
                time.sleep(0.5)
            restart_s = _start(own_triton, log_path)
            _all_delivered(client, ids, receiver)
            recovered_s = time.monotonic() - killed
    finally:
        gateway.stop()
    assert _sqlite_finishes(tmp_path / "jobs.sqlite3") == dict.fromkeys(ids, 1)
    log.info("triton restart %.1fs; all jobs done %.1fs after the kill", restart_s, recovered_s)


class PersistentRedis(RedisServer):
    """redis-server that keeps its data across a restart on the same port (AOF, fsync always)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()

    def start(self) -> PersistentRedis:
        binary = self.binary()
        assert binary
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(answers, timeout_s=20)
        return self


def test_jobs_finish_after_redis_restarts(tmp_path: Path, triton: TritonServer) -> None:
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    redis = PersistentRedis(tmp_path).start()
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(triton, tmp_path, jobs_lease_s=2, jobs_store="redis")
    env["MLAPI_GATEWAY_REDIS_URL"] = redis.url
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    headers = {"Authorization": f"Bearer {key}"}

    def full_log() -> str:
        return gateway.log_path.read_text(errors="replace")

    try:
        with (
            WebhookReceiver() as receiver,
            httpx.Client(base_url=gateway.url, headers=headers) as client,
        ):
            ids = _submit(client, receiver)
            wait_for(lambda: _running_with_progress(client, ids), 30, 0.02)
            redis.stop()
            stopped = time.monotonic()
            wait_for(lambda: "job store unavailable" in full_log(), timeout_s=30)
            while time.monotonic() - stopped < 5:  # down for longer than the 2 s leases
                time.sleep(0.5)
            redis.start()
            _all_delivered(client, ids, receiver)
            assert "job store back" in full_log()
            assert _redis_finishes(redis.url, ids) == dict.fromkeys(ids, 1)
    finally:
        gateway.stop()
        redis.stop()
