"""Overload is shed, not queued: the per-worker in-flight cap (503 + Retry-After), the per-key
stream cap (429 + Retry-After), and readiness that follows Triton and Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mlapi_tools.build.digits_data import DigitsSplit
from mlapi_tools.local.triton_process import TritonServer

from .conftest import gateway_env
from .harness import Gateway, RedisServer, create_key, wait_for

log = logging.getLogger(__name__)
CONNECTIONS = 500
MAX_IN_FLIGHT = 16
DEADLINE_S = 5.0  # the gateway's deadline: an accepted request answers within it or gets 504


@pytest.fixture
def key(tmp_path: Path) -> str:
    return create_key(tmp_path / "keys.json", "predict")


def _gateway(triton: TritonServer, tmp_path: Path, **overrides: object) -> Gateway:
    env = gateway_env(triton, tmp_path, **overrides)
    return Gateway(env, tmp_path / "gateway.log").start()


@pytest.fixture
def shedding_gateway(triton: TritonServer, tmp_path: Path, key: str) -> Iterator[Gateway]:
    server = _gateway(
        triton, tmp_path, max_in_flight=MAX_IN_FLIGHT, deadline_s=DEADLINE_S, max_streams_per_key=1
    )
    yield server
    assert server.stop() == 0, server.log()


async def _one(port: int, request: bytes, timeout_s: float) -> tuple[int, dict[str, str], float]:
    """One request on its own connection: (status, headers, seconds until the whole answer)."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, time.perf_counter() - start
    finally:
        writer.close()


async def _burst(port: int, request: bytes, count: int, timeout_s: float) -> list:
    return await asyncio.gather(*(_one(port, request, timeout_s) for _ in range(count)))


def test_500_connections_are_served_or_shed_with_retry_after(
    shedding_gateway: Gateway, key: str, split: DigitsSplit
) -> None:
    body = json.dumps({"pixels": split.test_images[0].tolist()}).encode()
    request = (
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    start = time.perf_counter()
    # Every answer must come: a hang fails here (the timeout), not at pytest's 300 s.
    answers = asyncio.run(_burst(shedding_gateway.port, request, CONNECTIONS, timeout_s=60))
    wall_s = time.perf_counter() - start
    statuses = [status for status, _, _ in answers]
    shed = [headers for status, headers, _ in answers if status == 503]
    # The latency bound is on the gateway's own time (its access lines), not on the test's
    # clock: 500 connections handled by one asyncio loop in pytest on a loaded machine read
    # their answers late. A gateway that queues instead of shedding still exceeds it.
    served = wait_for(lambda: _predict_lines(shedding_gateway, CONNECTIONS), timeout_s=30)
    accepted = sorted(line["latency_ms"] / 1000 for line in served if line["status"] == 200)
    shed_s = [line["latency_ms"] / 1000 for line in served if line["status"] == 503]
    p99 = float(np.percentile(accepted, 99)) if accepted else float("nan")
    shed_p99 = float(np.percentile(shed_s, 99)) if shed_s else float("nan")
    log.warning(
        "%d connections in %.2f s: %d accepted (served p50 %.3f s, p99 %.3f s), %d shed "
        "(served p99 %.3f s); slowest answer seen by the client %.2f s",
        CONNECTIONS, wall_s, len(accepted), float(np.median(accepted)), p99, len(shed), shed_p99,
        max(seconds for _, _, seconds in answers),
    )  # fmt: skip
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert shed and len(shed) < CONNECTIONS, len(shed)
    # The gateway saw exactly what the client saw.
    assert sorted(line["status"] for line in served) == sorted(statuses)
    assert p99 < DEADLINE_S, p99
    for headers in shed:
        assert int(headers["retry-after"]) >= 1
        assert headers["content-type"] == "application/problem+json"
    assert statuses.count(200) + len(shed) == CONNECTIONS


def _predict_lines(gateway: Gateway, count: int) -> list[dict] | None:
    """The gateway's access lines for digits predictions, once there are ``count`` of them."""
    lines = [
        json.loads(text)
        for text in gateway.log_path.read_text(errors="replace").splitlines()
        if text.startswith("{") and '"path":"/v1/models/digits/predict"' in text
    ]
    return lines if len(lines) >= count else None


class OpenStream:
    """A long stream of stream_count (100 events, 100 ms apart), held open after its first event.

    The line iterator is kept: dropping a half-read httpx iterator closes the connection.
    """

    def __init__(self, client: httpx.Client) -> None:
        request = client.build_request(
            "POST",
            "/v1/models/stream_count/stream",
            json={"inputs": {"count": [100], "delay_ms": [100]}},
        )
        self.reply = client.send(request, stream=True)
        self.status_code = self.reply.status_code
        if self.status_code == 200:
            self.lines = self.reply.iter_lines()
            while not next(self.lines).startswith("event: message"):
                pass
        else:
            self.reply.read()

    def close(self) -> None:
        self.reply.close()


def test_streams_per_key_are_capped_with_429(
    shedding_gateway: Gateway, key: str, tmp_path: Path
) -> None:
    other = create_key(tmp_path / "keys.json", "predict")
    wait_for(  # the gateway re-reads the keys file every 0.2 s
        lambda: (
            httpx.get(
                f"{shedding_gateway.url}/v1/models",
                headers={"Authorization": f"Bearer {other}"},
                timeout=30,
            ).status_code
            == 200
        ),
        timeout_s=60,
    )
    # stream_count has two instances: one stream of each key keeps both busy.
    headers = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=shedding_gateway.url, headers=headers, timeout=30) as client,
        httpx.Client(
            base_url=shedding_gateway.url, headers={"Authorization": f"Bearer {other}"}, timeout=30
        ) as client_b,
    ):
        first = OpenStream(client)
        assert first.status_code == 200
        refused = OpenStream(client).reply
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["content-type"] == "application/problem+json"
        assert "1 open stream " in refused.json()["detail"]
        theirs = OpenStream(client_b)  # the cap is per key
        assert theirs.status_code == 200
        theirs.close()
        first.close()  # the gateway notices at its next event and gives the slot back

        def reopened() -> OpenStream | None:
            stream = OpenStream(client)
            if stream.status_code == 200:
                return stream
            stream.close()
            return None

        wait_for(reopened, timeout_s=30, interval_s=0.3).close()


def test_readiness_follows_redis(triton: TritonServer, tmp_path: Path) -> None:
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    redis = RedisServer(tmp_path).start()
    gateway = _gateway(triton, tmp_path, redis_url=redis.url)
    try:
        ready = f"{gateway.url}/readyz"
        assert httpx.get(ready, timeout=30).status_code == 200
        redis.stop()
        reply = httpx.get(ready, timeout=30)
        assert reply.status_code == 503, reply.text
        assert int(reply.headers["Retry-After"]) >= 1
        assert "Redis" in reply.json()["detail"] and "Triton" not in reply.json()["detail"]
        assert httpx.get(f"{gateway.url}/healthz", timeout=30).status_code == 200
        redis.start()  # the same port again
        wait_for(lambda: httpx.get(ready, timeout=30).status_code == 200, timeout_s=60)
    finally:
        gateway.stop()
        redis.stop()
