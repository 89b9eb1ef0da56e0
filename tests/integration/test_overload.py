"""500 requests at once at the public `digits` model, on a server of its own: the queue policy
sheds what it cannot serve in time with UNAVAILABLE ("Exceeds maximum queue size" / "Request
timeout expired"), every request gets an answer within a bound, and the accepted ones finish
within the configured queue timeout plus compute.

The latency bound is on Triton's own clock (its latency summaries), not the test's: one
asyncio loop in pytest reading 500 answers on a loaded machine adds its own wait to each. A
queue policy that queues instead of shedding still breaks it."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
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


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A fresh server per burst: its latency summaries then cover that burst alone."""
    with own_triton(
        tmp_path_factory.mktemp("overload"),
        models=PUBLIC_MODELS,
        extra_args=["--metrics-config=summary_latencies=true"],
    ) as triton:
        yield triton


def _summary(server: TritonServer, family: str) -> tuple[int, float]:
    """(count, 0.99 quantile in seconds) of one of Triton's latency summaries for digits."""
    text = urllib.request.urlopen(server.metrics_url, timeout=30).read().decode()
    labels = r'\{model="digits",version="1"'
    count = re.search(rf"^{family}_count{labels}\}} (\S+)$", text, re.M)
    p99 = re.search(rf'^{family}{labels},quantile="0.99"\}} (\S+)$', text, re.M)
    assert count and p99, f"no {family} for digits in Triton's metrics"
    return int(float(count.group(1))), float(p99.group(1)) / 1e6


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
    # Triton's view of the same requests: the accepted ones (and the warm-up calls), end to end
    # inside the server and in its queue.
    served, served_p99 = _summary(server, "nv_inference_request_summary_us")
    _, queued_p99 = _summary(server, "nv_inference_queue_summary_us")
    report_figure(
        f"overload {protocol}: {CONNECTIONS} at once",
        f"{dict(outcomes)}; served p99 {served_p99 * 1000:.0f} ms (bound {bound_s:.1f} s), "
        f"queued p99 {queued_p99 * 1000:.0f} ms; at the client: accepted p50 "
        f"{np.percentile(accepted, 50) * 1000:.0f} ms, p99 "
        f"{np.percentile(accepted, 99) * 1000:.0f} ms, slowest answer {slowest:.2f} s; "
        f"burst took {elapsed:.1f} s",
    )
    assert len(results) == CONNECTIONS
    assert not [o for o in outcomes if o.startswith("unexpected")], outcomes
    assert accepted.size > 0
    assert served >= accepted.size, (served, accepted.size)
    assert served_p99 <= bound_s, served_p99
    assert slowest < ANSWER_BOUND_S
    # ... and the server serves correctly after the burst.
    with Client(server.http_url) as client:
        assert client.is_live() and client.is_ready("digits")
        assert client.digits(IMAGE[0], top_k=1).label == "1"
