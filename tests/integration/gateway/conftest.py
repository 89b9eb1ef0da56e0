"""Gateway tests: a real gateway process in front of the real tritonserver of the session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlapi_tools.local.triton_process import TritonServer

from .harness import WEBHOOK_SECRET, Gateway, RedisServer, create_key

EXPOSED = ["digits", "slow", "stream_count", "text_generator"]
PLANS = {
    "default": {"rate_per_s": 1000, "burst": 1000},
    "tiny": {"rate_per_s": 0.2, "burst": 3},
}


def gateway_env(triton: TritonServer, workdir: Path, **overrides: object) -> dict[str, str]:
    env = {
        "MLAPI_GATEWAY_TRITON_GRPC_URL": triton.grpc_url,
        "MLAPI_GATEWAY_TRITON_HTTP_URL": triton.http_url,
        "MLAPI_GATEWAY_MODELS": json.dumps(EXPOSED),
        "MLAPI_GATEWAY_KEYS_FILE": str(workdir / "keys.json"),
        "MLAPI_GATEWAY_KEYS_RELOAD_INTERVAL_S": "0.2",
        "MLAPI_GATEWAY_JOBS_DB": str(workdir / "jobs.sqlite3"),
        "MLAPI_GATEWAY_PLANS": json.dumps(PLANS),
        "MLAPI_GATEWAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "MLAPI_GATEWAY_WEBHOOK_ALLOW": json.dumps(["127.0.0.1/32"]),
        "MLAPI_GATEWAY_WEBHOOK_BACKOFF_S": "0.2",
        "MLAPI_GATEWAY_SSE_HEARTBEAT_S": "0.3",
        "MLAPI_GATEWAY_JOBS_POLL_S": "0.05",
        "MLAPI_GATEWAY_JOBS_CONCURRENCY": "1",
        "MLAPI_GATEWAY_RETRY_AFTER_S": "1",
        # Short enough that the tests of these bounds wait little, long enough for a busy machine.
        "MLAPI_GATEWAY_BODY_TIMEOUT_S": "2",
        "MLAPI_GATEWAY_SSE_IDLE_TIMEOUT_S": "5",
    }
    env.update({f"MLAPI_GATEWAY_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


@pytest.fixture(scope="session")
def gateway_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="session")
def gateway(triton: TritonServer, gateway_dir: Path, keys: dict[str, str]) -> Iterator[Gateway]:
    server = Gateway(gateway_env(triton, gateway_dir), gateway_dir / "gateway.log").start()
    yield server
    assert server.stop() == 0, server.log()  # a clean, graceful stop


@pytest.fixture(scope="session")
def keys(gateway_dir: Path) -> dict[str, str]:
    keys_file = gateway_dir / "keys.json"
    return {
        "predict": create_key(keys_file, "predict"),
        "admin": create_key(keys_file, "admin"),
        "both": create_key(keys_file, "predict", "admin"),
    }


@pytest.fixture(scope="session")
def api(gateway: Gateway, keys: dict[str, str]) -> Iterator[httpx.Client]:
    """An HTTP client of the gateway authenticated with a predict key."""
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {keys['predict']}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of this test's own, on a free port."""
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
