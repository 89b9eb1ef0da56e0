"""500 requests at once at the public `digits` model, on a server of its own: the queue policy
sheds what it cannot serve in time with UNAVAILABLE ("Exceeds maximum queue size" / "Request
timeout expired"), every request gets an answer within a bound, and the accepted ones finish
within the configured queue timeout plus compute."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from mlapi_backend.model_config import read_pbtxt
from mlapi_client import AsyncClient, Client
from mlapi_client.errors import MlapiError, ServerOverloadedError
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton

from .conftest import MODEL_REPOSITORY, PUBLIC_MODELS

CONNECTIONS = 500
HTTP_POOL_LIMIT = 100  # mlapi_client.http_pool.DEFAULT_LIMIT: one client per 100 connections
ANSWER_BOUND_S = 60.0  # no request may wait longer than this for any answer (a hang)
COMPUTE_MARGIN_S = 2.0  # a batch's compute on a loaded 2-CPU machine, generously
OVERLOAD_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")

IMAGE = np.zeros((1, 8, 8), dtype=np.uint8)
IMAGE[0, 1:7, 3:5] = 255  # a "1"


def _queue_timeout_s() -> float:
    policy = read_pbtxt(MODEL_REPOSITORY / "digits" / "config.pbtxt")["dynamic_batching"]
    return int(policy["default_queue_policy"]["default_timeout_microseconds"]) / 1e6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with own_triton(tmp_path_factory.mktemp("overload"), models=PUBLIC_MODELS) as triton:
        yield triton


async def _one(client: AsyncClient) -> tuple[str, float]:
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            client.infer("digits", {"image": IMAGE}, retry=False, timeout_s=ANSWER_BOUND_S),
            ANSWER_BOUND_S,
        )
        outcome = "ok"
    except ServerOverloadedError as exc:
        shed = [m for m in OVERLOAD_MESSAGES if m in exc.message]
        outcome = f"shed: {shed[0]}" if shed else f"unexpected: {exc.message}"
    except (MlapiError, asyncio.TimeoutError) as exc:
        outcome = f"unexpected: {type(exc).__name__}: {exc}"
    return outcome, time.monotonic() - started


async def _burst(urls: list[str]) -> list[tuple[str, float]]:
    clients = [AsyncClient(url) for url in urls]
    try:
        for client in clients:  # connect (and warm up) before the burst
            await client.infer("digits", {"image": IMAGE})
        per_client = CONNECTIONS // len(clients)
        return list(await asyncio.gather(*(_one(c) for c in clients for _ in range(per_client))))
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_500_at_once_are_all_answered_and_accepted_ones_within_the_bound(
    server, protocol, report_figure
):
    if protocol == "grpc":
        urls = [f"grpc://{server.grpc_url}"]  # one channel, 500 concurrent calls
    else:
        urls = [f"http://{server.http_url}"] * (CONNECTIONS // HTTP_POOL_LIMIT)
    started = time.monotonic()
    results = asyncio.run(_burst(urls))
    elapsed = time.monotonic() - started
    outcomes = Counter(outcome for outcome, _ in results)
    accepted = np.array([t for outcome, t in results if outcome == "ok"])
    slowest = max(t for _, t in results)
    bound_s = _queue_timeout_s() + COMPUTE_MARGIN_S
    p99 = float(np.percentile(accepted, 99)) if accepted.size else float("nan")
    report_figure(
        f"overload {protocol}: {CONNECTIONS} at once",
        f"{dict(outcomes)}; accepted p50 {np.percentile(accepted, 50) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms (bound {bound_s:.1f} s); slowest answer {slowest:.2f} s; "
        f"burst took {elapsed:.1f} s",
    )
    assert len(results) == CONNECTIONS
    assert not [o for o in outcomes if o.startswith("unexpected")], outcomes
    assert accepted.size > 0
    assert p99 <= bound_s, p99
    assert slowest < ANSWER_BOUND_S


def test_the_server_serves_correctly_after_the_bursts(server):
    with Client(server.http_url) as client:
        assert client.is_live() and client.is_ready("digits")
        assert client.digits(IMAGE[0], top_k=1).label == "1"
