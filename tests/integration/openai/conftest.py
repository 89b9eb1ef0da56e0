"""OpenAI-compatible routes: a real gateway in front of the session's real tritonserver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from mlapi_tools.local.triton_process import TritonServer
from tests.integration.gateway.conftest import EXPOSED, PLANS, gateway_env
from tests.integration.gateway.harness import Gateway, create_key

MODELS = [*EXPOSED, "text_embedder"]
# "metered": small per-minute budgets, to reach the 429s; the other plans have none.
OPENAI_PLANS = {**PLANS, "metered": {"rate_per_s": 1000, "burst": 1000}}
REQUESTS_PER_MIN = {"metered": 4}
TOKENS_PER_MIN = {"metered": 400}


def openai_env(triton: TritonServer, workdir: Path, **overrides: object) -> dict[str, str]:
    env = gateway_env(triton, workdir, **overrides)
    env["MLAPI_GATEWAY_MODELS"] = json.dumps(MODELS)
    env["MLAPI_GATEWAY_PLANS"] = json.dumps(OPENAI_PLANS)
    env.setdefault("MLAPI_GATEWAY_OPENAI_REQUESTS_PER_MIN", json.dumps(REQUESTS_PER_MIN))
    env.setdefault("MLAPI_GATEWAY_OPENAI_TOKENS_PER_MIN", json.dumps(TOKENS_PER_MIN))
    return env


@pytest.fixture(scope="session")
def openai_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openai-gateway")


@pytest.fixture(scope="session")
def openai_keys(openai_dir: Path) -> dict[str, str]:
    keys_file = openai_dir / "keys.json"
    return {
        "predict": create_key(keys_file, "predict"),
        "admin": create_key(keys_file, "admin"),
        "metered": create_key(keys_file, "predict", plan="metered"),
    }


@pytest.fixture(scope="session")
def openai_gateway(
    triton: TritonServer, openai_dir: Path, openai_keys: dict[str, str]
) -> Iterator[Gateway]:
    server = Gateway(openai_env(triton, openai_dir), openai_dir / "gateway.log").start()
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="session")
def base_url(openai_gateway: Gateway) -> str:
    return f"{openai_gateway.url}/openai/v1"


@pytest.fixture
def client(base_url: str, openai_keys: dict[str, str]) -> Iterator[openai.OpenAI]:
    """The real openai package's client; only base_url and the key differ from OpenAI's."""
    with openai.OpenAI(base_url=base_url, api_key=openai_keys["predict"], max_retries=0) as c:
        yield c
