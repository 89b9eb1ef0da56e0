"""A model whose Python stub died, seen through the gateway (on a Triton of the test's own):
unary calls get 503 with Retry-After, an in-flight stream ends promptly with an error event."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlapi_client import access
from mlapi_tools.local.triton_process import Ports, TritonServer

from ..conftest import MODEL_REPOSITORY, TEST_REPOSITORY
from .conftest import gateway_env
from .harness import Gateway, create_key, stub_pids

log = logging.getLogger(__name__)
IDLE_S = 2.0  # MLAPI_GATEWAY_SSE_IDLE_TIMEOUT_S of this test's gateway
MODELS = {"slow": TEST_REPOSITORY, "text_generator": MODEL_REPOSITORY, "text_decoder": MODEL_REPOSITORY}  # fmt: skip


@pytest.fixture
def crash_triton(tmp_path: Path) -> Iterator[TritonServer]:
    """slow and text_generator (with its decoder) only: the stubs this test kills are its own."""
    if not (MODEL_REPOSITORY / "text_decoder" / "1" / "model.onnx").is_file():
        pytest.fail("models are not built: run `make models` (make test does it for you)")
    repository = tmp_path / "repository"
    repository.mkdir()
    for name, source in MODELS.items():
        (repository / name).symlink_to(source / name, target_is_directory=True)
    server = TritonServer(
        [repository],
        tmp_path / "backends",
        ports=Ports.free(),
        exit_timeout_s=5,
        access_key=access.read_key(),
    )
    with (tmp_path / "triton.log").open("wb") as log:
        server.start(log)
        try:
            server.wait_ready(timeout_s=120, models=tuple(MODELS))
            yield server
        finally:
            server.stop()


@pytest.fixture
def crash_api(crash_triton: TritonServer, tmp_path: Path) -> Iterator[httpx.Client]:
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(
        crash_triton,
        tmp_path,
        models=json.dumps(["slow", "text_generator"]),
        sse_idle_timeout_s=IDLE_S,
    )
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=60) as client:
            yield client
    finally:
        assert gateway.stop() == 0, gateway.log()


def _kill_stub(triton: TritonServer, model: str) -> None:
    assert triton.process is not None
    pids = stub_pids(triton.process.pid, model)
    assert pids, f"no Python stub of {model} under tritonserver {triton.process.pid}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_dead_stub_is_503_with_retry_after(
    crash_triton: TritonServer, crash_api: httpx.Client
) -> None:
    body = {"inputs": {"delay_ms": [[1]]}}
    assert crash_api.post("/v1/models/slow/predict", json=body).status_code == 200
    _kill_stub(crash_triton, "slow")
    reply = crash_api.post("/v1/models/slow/predict", json=body)
    assert reply.status_code == 503, reply.text
    assert int(reply.headers["Retry-After"]) >= 1
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["type"].endswith("/unavailable")
    assert crash_api.get("/healthz").status_code == 200


def test_stream_of_a_dead_stub_ends_with_an_error_event(
    crash_triton: TritonServer, crash_api: httpx.Client
) -> None:
    body = {"inputs": {"text_input": ["The "], "max_tokens": [1024]}}
    events: list[tuple[str, str]] = []
    killed_at = None
    with crash_api.stream(
        "POST",
        "/v1/models/text_generator/stream",
        json=body,
        headers={"X-Request-ID": "crash-stream-1"},
    ) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["X-Request-ID"] == "crash-stream-1"
        name = ""
        for line in reply.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((name, line[len("data: ") :]))
                if killed_at is None and name == "message":
                    _kill_stub(crash_triton, "text_generator")
                    killed_at = time.monotonic()
        ended_s = time.monotonic() - (killed_at or 0)
    assert killed_at is not None
    log.warning(
        "stream ended %.2f s after the kill, %d events: %s", ended_s, len(events), events[-1]
    )
    last_name, last_data = events[-1]
    assert last_name == "error", events[-3:]
    problem = json.loads(last_data)
    assert problem["status"] == 503, problem
    assert problem["type"].endswith("/unavailable") and problem["detail"]
    # The HTTP errors' problem shape, quoting the request id.
    assert problem["title"] == "Model unavailable" and problem["request_id"] == "crash-stream-1"
    # Prompt: the idle bound plus a generous margin, not sse_max_duration_s (300 s).
    assert ended_s < IDLE_S + 15, ended_s
    assert len(events) < 1024  # the stream did not run to its end
