"""digits' limits come from the served config: reloading the model with another max_top_k
changes what a running gateway accepts and documents (a Triton of the test's own)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlapi_client import Client
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton as start_triton

from .conftest import gateway_env
from .harness import Gateway, create_key

PREDICT = "/v1/models/digits/predict"
BODY = {"pixels": [[0] * 8] * 8, "top_k": 5}


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonServer]:
    with start_triton(tmp_path) as server:  # digits and its classifier
        yield server


def _documented_max_top_k(api: httpx.Client) -> Any:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    return schemas["DigitsPredict"]["properties"]["top_k"]["anyOf"][0].get("maximum")


def _until_refused(api: httpx.Client, timeout_s: float = 60.0) -> httpx.Response:
    """The first answer to BODY that is not a 200 (the reload may take a while to land)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = api.post(PREDICT, json=BODY)
        if reply.status_code != 200:
            return reply
        time.sleep(0.2)
    raise AssertionError(f"top_k 5 still accepted after {timeout_s} s")


def _documented_once(api: httpx.Client, wanted: int, timeout_s: float = 60.0) -> int:
    """The documented max top_k once it reads ``wanted`` (else the last value read).

    /openapi.json documents the limits the adapter last read, and a predict is what reads them:
    the first refusal may come from the reloaded model itself, before the gateway's cached
    config expired, so predicts go on until the document follows.
    """
    deadline = time.monotonic() + timeout_s
    while (documented := _documented_max_top_k(api)) != wanted and time.monotonic() < deadline:
        api.post(PREDICT, json={**BODY, "top_k": wanted})
        time.sleep(0.2)
    return documented


def test_a_reloaded_model_limit_reaches_the_gateway(
    own_triton: TritonServer, tmp_path: Path
) -> None:
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(own_triton, tmp_path, models=json.dumps(["digits"]), metadata_cache_s=0.5)
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    try:
        with httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as api:
            reply = api.post(PREDICT, json=BODY)
            assert reply.status_code == 200, reply.text
            assert len(reply.json()["predictions"]) == 5
            assert _documented_max_top_k(api) == 10  # as config.pbtxt ships it
            with Client(f"http://{own_triton.http_url}") as triton:
                config = triton.model_config("digits")
                config["parameters"]["max_top_k"] = {"string_value": "4"}
                triton.load_model("digits", config)
            refused = _until_refused(api)
            assert refused.status_code == 400, refused.text
            (error,) = refused.json()["errors"]
            assert error["field"] == "body.top_k"
            assert error["expected"] == "an integer in 1..4"
            assert _documented_once(api, 4) == 4
            served = api.post(PREDICT, json={**BODY, "top_k": 4})
            assert served.status_code == 200, served.text
            assert len(served.json()["predictions"]) == 4
    finally:
        assert gateway.stop() == 0, gateway.log()
