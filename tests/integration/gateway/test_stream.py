"""SSE relay of a decoupled model: events as generated, heartbeats, cancellation on disconnect."""

from __future__ import annotations

import json
import re
import urllib.request

import httpx
import pytest

from mlapi_tools.local.triton_process import TritonServer

from .harness import wait_for


def _events(lines: list[str]) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


def _cancelled_streams(triton: TritonServer) -> float:
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    match = re.search(
        r'^mlapi_test_stream_cancelled_total\{model="stream_count"\} (\S+)', text, re.M
    )
    return float(match.group(1)) if match else 0.0


def test_events_are_relayed_in_order_then_done(api: httpx.Client) -> None:
    body = {"inputs": {"count": [4], "delay_ms": [20]}}
    with api.stream("POST", "/v1/models/stream_count/stream", json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = _events(list(reply.iter_lines()))
    assert [name for name, _ in events] == ["message"] * 4 + ["done"]
    assert [e["outputs"]["text_output"] for _, e in events[:4]] == [
        [f"token {i}"] for i in range(4)
    ]


def test_idle_stream_sends_heartbeats(api: httpx.Client) -> None:
    body = {"inputs": {"count": [2], "delay_ms": [1200]}}
    with api.stream("POST", "/v1/models/stream_count/stream", json=body) as reply:
        lines = list(reply.iter_lines())
    assert ": heartbeat" in lines
    assert [name for name, _ in _events(lines)] == ["message", "message", "done"]


def test_client_disconnect_cancels_the_triton_stream(
    api: httpx.Client, triton: TritonServer
) -> None:
    before = _cancelled_streams(triton)
    body = {"inputs": {"count": [400], "delay_ms": [50]}}
    with api.stream("POST", "/v1/models/stream_count/stream", json=body) as reply:
        seen = 0
        for line in reply.iter_lines():
            seen += line.startswith("event: message")
            if seen == 3:
                break
    # The model sees the cancellation long before its 400 x 50 ms would have run out.
    wait_for(lambda: _cancelled_streams(triton) > before, timeout_s=10, interval_s=0.2)
    assert api.get("/readyz").status_code == 200


def test_stream_input_errors_are_400_before_streaming(api: httpx.Client) -> None:
    reply = api.post("/v1/models/stream_count/stream", json={"inputs": {"count": ["x"]}})
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["field"] == "body.inputs.count"


def test_text_generator_streams_when_present(api: httpx.Client) -> None:
    models = {m["name"]: m for m in api.get("/v1/models").json()["models"]}
    if models.get("text_generator", {}).get("state") != "READY":
        pytest.skip("model text_generator is not in the served repository yet")
    body = {"inputs": {"text_input": ["The "], "max_tokens": [8]}}
    with api.stream("POST", "/v1/models/text_generator/stream", json=body) as reply:
        assert reply.status_code == 200, reply.read()
        events = _events(list(reply.iter_lines()))
    assert events[-1][0] == "done"
    assert len(events) >= 2
