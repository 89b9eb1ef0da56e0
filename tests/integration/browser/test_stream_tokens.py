"""Stream tokens: bound to the model, single-use, short-lived, shared through Redis."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from mlapi_tools.local.triton_process import TritonServer
from tests.integration.gateway.conftest import gateway_env
from tests.integration.gateway.harness import Gateway, RedisServer, create_key

STREAM = {"inputs": {"text_input": ["The "], "max_tokens": [6], "seed": [1]}}


def _mint(url: str, key: str, model: str = "text_generator", body: dict = STREAM) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/{model}/stream-tokens",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def _events(url: str) -> tuple[int, str]:
    with httpx.stream("GET", url, timeout=60) as reply:
        return reply.status_code, reply.read().decode()


def test_token_opens_its_own_stream_once(cors_gateway: Gateway, browser_key: str) -> None:
    minted = _mint(cors_gateway.url, browser_key)
    assert minted.status_code == 201, minted.text
    grant = minted.json()
    assert grant["token"].startswith("mlst_") and grant["expires_in_s"] == 20
    assert minted.headers["cache-control"] == "no-store"
    # Bound to its model: another model's stream URL is refused (and the token is used up).
    other = f"{cors_gateway.url}/v1/models/stream_count/stream?token={grant['token']}"
    status, text = _events(other)
    assert status == 403 and "text_generator" in text
    assert _events(cors_gateway.url + grant["stream_url"])[0] == 401

    grant = _mint(cors_gateway.url, browser_key).json()
    status, text = _events(cors_gateway.url + grant["stream_url"])
    assert status == 200 and text.count("event: message") >= 1 and "event: done" in text
    assert _events(cors_gateway.url + grant["stream_url"])[0] == 401
    # The access log names the route and the key id, never the token in the query string.
    log = cors_gateway.log_path.read_text(errors="replace")
    assert '"route":"/v1/models/{model}/stream"' in log and grant["token"] not in log


def test_minting_is_authenticated_and_checked(cors_gateway: Gateway, browser_key: str) -> None:
    assert _mint(cors_gateway.url, "mlapi_nope_secret").status_code == 401
    assert _mint(cors_gateway.url, browser_key, model="nope").status_code == 404
    refused = _mint(cors_gateway.url, browser_key, model="digits", body={"inputs": {"x": [1]}})
    assert refused.status_code == 400 and "does not stream" in refused.text
    bad = _mint(cors_gateway.url, browser_key, body={"inputs": {}})
    assert bad.status_code == 400
    no_token = _events(f"{cors_gateway.url}/v1/models/text_generator/stream")
    assert no_token[0] == 401 and "stream-tokens" in no_token[1]


def test_redis_shares_tokens_across_workers_and_expires_them(
    triton: TritonServer, tmp_path: Path
) -> None:
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    redis = RedisServer(tmp_path).start()
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(triton, tmp_path, redis_url=redis.url, stream_token_ttl_s=1)
    gateway = Gateway(env, tmp_path / "gateway.log", workers=2).start()
    try:
        # Minted on one worker, opened on whichever the next connection reaches.
        for _ in range(6):
            grant = _mint(gateway.url, key).json()
            status, text = _events(gateway.url + grant["stream_url"])
            assert status == 200 and "event: done" in text, text
        grant = _mint(gateway.url, key).json()
        time.sleep(1.5)  # past the token's 1 s life
        assert _events(gateway.url + grant["stream_url"])[0] == 401
    finally:
        assert gateway.stop() == 0, gateway.log()
        redis.stop()
