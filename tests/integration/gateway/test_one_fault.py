"""One fault, one status: with ``digits`` unloaded on a Triton of the test's own, every route
(unversioned, versioned, jobs, stream) answers the same status and problem type, each answer
carries the request id, and the access log and the 5xx log name it."""

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

from ..conftest import MODEL_REPOSITORY, PUBLIC_MODELS, TEST_REPOSITORY
from .conftest import gateway_env
from .harness import Gateway, create_key

PIXELS = {"pixels": [[0] * 8] * 8}


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonServer]:
    repositories = [MODEL_REPOSITORY, TEST_REPOSITORY]
    with start_triton(tmp_path, repositories, models=PUBLIC_MODELS) as server:
        yield server


def _job_result(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    created = api.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = api.get(created.headers["Location"]).json()
        if job["status"] in ("succeeded", "failed"):
            return job["results"][0]  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise TimeoutError(f"job did not finish: {job}")


def _access_lines(gateway: Gateway) -> dict[str, dict[str, Any]]:
    lines = [
        json.loads(line) for line in gateway.log_path.read_text().splitlines() if line[:1] == "{"
    ]
    return {line["request_id"]: line for line in lines}


def test_an_unloaded_model_is_one_503_on_every_route(
    own_triton: TritonServer, tmp_path: Path
) -> None:
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(own_triton, tmp_path, jobs_retry_budget_s=1, jobs_max_attempts=1)
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    try:
        with httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as api:
            ok = api.post(
                "/v1/models/digits/predict", json=PIXELS, headers={"X-Request-ID": "ok-1"}
            )
            assert ok.status_code == 200, ok.text
            assert ok.headers["X-Request-ID"] == "ok-1"
            with Client(f"http://{own_triton.http_url}") as triton:
                triton.unload_model("digits")
            answers = {
                "predict": api.post(
                    "/v1/models/digits/predict", json=PIXELS, headers={"X-Request-ID": "f-1"}
                ),
                "versioned": api.post(
                    "/v1/models/digits/versions/1/predict",
                    json=PIXELS,
                    headers={"X-Request-ID": "f-2"},
                ),
                "stream": api.post(
                    "/v1/models/digits/stream",
                    json={"inputs": {"image": ["x"]}},
                    headers={"X-Request-ID": "f-3"},
                ),
            }
            problems = {}
            for route, reply in answers.items():
                assert reply.status_code == 503, (route, reply.text)
                assert int(reply.headers["Retry-After"]) >= 1, route
                assert reply.headers["content-type"] == "application/problem+json", route
                problems[route] = reply.json()
                assert problems[route]["request_id"] == reply.headers["X-Request-ID"], route
            job = _job_result(api, {"model": "digits", "inputs": [PIXELS]})
            assert job["status"] == 503, job
            problems["jobs"] = job["problem"]
            types = {route: problem["type"] for route, problem in problems.items()}
            assert set(types.values()) == {"https://mlapi.dev/problems/unavailable"}, types
            for problem in problems.values():
                assert {"type", "title", "status", "detail", "retry_after_s"} <= problem.keys()
                assert problem["status"] == 503
    finally:
        assert gateway.stop() == 0, gateway.log()
    lines = _access_lines(gateway)
    assert lines["ok-1"]["status"] == 200 and lines["ok-1"]["model"] == "digits"
    assert lines["ok-1"]["version"] in ("1", "2") and lines["ok-1"]["key_id"]
    assert key not in gateway.log_path.read_text()
    for request_id in ("f-1", "f-2", "f-3"):
        assert lines[request_id]["status"] == 503 and lines[request_id]["model"] == "digits"
        logged = [
            line
            for line in gateway.log_path.read_text().splitlines()
            if f"(request {request_id};" in line
        ]
        assert len(logged) == 1 and "WARNING" in logged[0] and "cause " in logged[0], logged
