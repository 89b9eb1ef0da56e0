"""Per-minute budgets in Redis: every worker draws from one bucket per key."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from mlapi_tools.local.triton_process import TritonServer
from tests.integration.gateway.harness import Gateway, RedisServer, create_key

from .conftest import REQUESTS_PER_MIN, openai_env


def test_two_workers_share_the_request_budget(triton: TritonServer, tmp_path: Path) -> None:
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    redis = RedisServer(tmp_path).start()
    key = create_key(tmp_path / "keys.json", "predict", plan="metered")
    env = openai_env(triton, tmp_path, redis_url=redis.url)
    gateway = Gateway(env, tmp_path / "gateway.log", workers=2).start()
    budget = REQUESTS_PER_MIN["metered"]
    try:
        with openai.OpenAI(
            base_url=f"{gateway.url}/openai/v1", api_key=key, max_retries=0
        ) as client:
            remaining = []
            for _ in range(budget):
                # a new connection each time: the calls spread over both workers
                raw = client.with_options(
                    default_headers={"Connection": "close"}
                ).completions.with_raw_response.create(
                    model="text_generator", prompt="Hi", max_tokens=2
                )
                remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
            assert remaining == list(range(budget - 1, -1, -1))
            with pytest.raises(openai.RateLimitError) as caught:
                client.completions.create(model="text_generator", prompt="Hi", max_tokens=2)
            assert int(caught.value.response.headers["retry-after"]) >= 1
    finally:
        assert gateway.stop() == 0, gateway.log()
        redis.stop()
