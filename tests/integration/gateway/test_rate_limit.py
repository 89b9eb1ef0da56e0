"""Token buckets per key: 429 with Retry-After; Redis shares the buckets across replicas."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from mlapi_tools.local.triton_process import TritonServer

from .conftest import gateway_env
from .harness import Gateway, RedisServer, create_key

BODY = {"pixels": [[(x * y) % 256 for x in range(8)] for y in range(8)]}


def _burst(urls: list[str], key: str, count: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    return [
        httpx.post(f"{urls[i % len(urls)]}/v1/models/digits/predict", json=BODY, headers=headers)
        for i in range(count)
    ]


def test_burst_over_the_plan_is_429_with_retry_after(gateway: Gateway, gateway_dir: Path) -> None:
    key = create_key(gateway_dir / "keys.json", "predict", plan="tiny")  # burst 3, 0.2/s
    replies = _burst([gateway.url], key, 1)
    while replies[0].status_code == 401:  # the keys file is re-read within 0.2 s
        replies = _burst([gateway.url], key, 1)
    replies += _burst([gateway.url], key, 5)
    statuses = [r.status_code for r in replies]
    assert statuses[:3] == [200, 200, 200]
    assert statuses[3:] == [429, 429, 429]
    limited = replies[-1]
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["content-type"] == "application/problem+json"
    assert "tiny" in limited.json()["detail"]
    # Another key is not affected.
    other = create_key(gateway_dir / "keys.json", "predict", plan="tiny")
    while _burst([gateway.url], other, 1)[0].status_code == 401:
        pass
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'mlapi_gateway_errors_total{status_class="4xx",type="rate_limit"}' in metrics


def test_two_replicas_share_limits_through_redis(
    triton: TritonServer, tmp_path: Path, redis_server: RedisServer
) -> None:
    keys_file = tmp_path / "keys.json"
    key = create_key(keys_file, "predict", plan="tiny")
    env = gateway_env(triton, tmp_path, redis_url=redis_server.url)
    env["MLAPI_GATEWAY_PLANS"] = json.dumps(
        {"default": {"rate_per_s": 100, "burst": 100}, "tiny": {"rate_per_s": 0.1, "burst": 4}}
    )
    replicas = [Gateway(env, tmp_path / f"gateway{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            replica.start()
        replies = _burst([r.url for r in replicas], key, 10)
        statuses = [r.status_code for r in replies]
        # Alone, each replica would admit 4 (8 in all); sharing one bucket admits 4 in all.
        assert statuses.count(200) == 4, statuses
        assert statuses[:4] == [200] * 4
        assert {r.status_code for r in replies[4::2]} == {429}
        assert {r.status_code for r in replies[5::2]} == {429}
    finally:
        for replica in replicas:
            replica.stop()
