"""The gateway's own logic in-process, in front of a fake Triton (create_app's services seam):
auth, field-level 400s, error mapping, request ids, the log line of each 5xx, and the one
problem shape of HTTP answers, job results and SSE error events."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from mlapi_client import errors as client_errors
from mlapi_gateway.keys import add_key, new_key
from mlapi_gateway.problems import TYPE_BASE

from .fake_triton import FakeTriton
from .inprocess import Gateway, run

PIXELS = {"pixels": [[0] * 8] * 8}
PREDICT = "/v1/models/digits/predict"


def _problem(reply: Any, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = reply.json()
    assert body["status"] == status
    assert body["request_id"] == reply.headers["X-Request-ID"]
    return body


def test_a_prediction_goes_through_the_fake_with_the_request_id(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        reply = await gw.http.post(
            PREDICT, json={**PIXELS, "top_k": 2}, headers={**gw.auth, "X-Request-ID": "abc-1"}
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Request-ID"] == "abc-1"
        assert reply.headers["X-Model-Version"] == "2"
        assert [p["label"] for p in reply.json()["predictions"]] == ["0", "1"]
        (call,) = gw.triton.called("digits")
        assert call["request_id"] == "abc-1" and call["top_k"] == 2
        assert call["image"].shape == (8, 8)

    run(tmp_path, check)


def test_auth_comes_before_the_model(tmp_path: Path) -> None:
    admin_key, record = new_key(["admin"])
    add_key(tmp_path / "keys.json", record)

    async def check(gw: Gateway) -> None:
        reply = await gw.http.post(PREDICT, json=PIXELS)
        _problem(reply, 401)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer x"}
        _problem(await gw.http.post(PREDICT, json=PIXELS, headers=wrong), 401)
        admin = {"Authorization": f"Bearer {admin_key}"}
        forbidden = _problem(await gw.http.post(PREDICT, json=PIXELS, headers=admin), 403)
        assert "predict" in forbidden["detail"]
        assert gw.triton.called("digits") == []

    run(tmp_path, check)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pixels": [[1, 2], [3]]}, "body.pixels"),
        ({"pixels": [[0] * 8] * 8, "top_k": 0}, "body.top_k"),
        ({"pixels": [[0] * 8] * 8, "top_k": 11}, "body.top_k"),
        ({"image": "***"}, "body.image"),
        ({"pixels": [[0] * 8] * 8, "colour": 1}, "body.colour"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    async def check(gw: Gateway) -> None:
        problem = _problem(await gw.http.post(PREDICT, json=body, headers=gw.auth), 400)
        assert field in [e["field"] for e in problem["errors"]], problem
        assert problem["instance"] == PREDICT
        assert gw.triton.called("digits") == []

    run(tmp_path, check)


def test_tensor_inputs_are_checked_against_the_contract(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        url = "/v1/models/echo/predict"
        problem = _problem(
            await gw.http.post(url, json={"inputs": {"x": [[1]]}}, headers=gw.auth), 400
        )
        assert problem["errors"][0]["field"] == "body.inputs.x"
        assert "FP32 with shape [-1, 2]" in problem["errors"][0]["expected"]
        reply = await gw.http.post(url, json={"inputs": {"x": [[1, 2]]}}, headers=gw.auth)
        assert reply.status_code == 200, reply.text
        assert reply.json()["outputs"] == {"y": [[2.0, 4.0]]}

    run(tmp_path, check)


@pytest.mark.parametrize(
    ("error", "status", "problem_type"),
    [
        (client_errors.ModelUnavailableError("digits: not ready"), 503, "unavailable"),
        (client_errors.ConnectionFailedError("refused"), 503, "unavailable"),
        (client_errors.InferenceTimeoutError("digits: deadline"), 504, "timeout"),
        (client_errors.ServerError("digits: boom"), 502, "model-error"),
        (client_errors.AccessDeniedError("key refused"), 503, "unavailable"),
    ],
)
def test_upstream_errors_map_to_statuses_and_are_logged_with_cause_and_request_id(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    status: int,
    problem_type: str,
) -> None:
    triton = FakeTriton.default()
    triton.fail["digits"] = error

    async def check(gw: Gateway) -> None:
        reply = await gw.http.post(
            PREDICT, json=PIXELS, headers={**gw.auth, "X-Request-ID": "req-5xx"}
        )
        problem = _problem(reply, status)
        assert problem["type"] == TYPE_BASE + problem_type
        if status == 503:
            assert reply.headers["Retry-After"] == "2" and problem["retry_after_s"] == 2
        if status == 504:
            assert "POST /v1/jobs" in problem["detail"]  # names the remedy

    with caplog.at_level(logging.WARNING, logger="mlapi_gateway"):
        run(tmp_path, check, triton)
    lines = [r for r in caplog.records if "(request req-5xx;" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert f"cause {type(error).__name__}: {error}" in lines[0].getMessage()
    assert lines[0].levelno == (
        logging.WARNING
        if status == 503 and not isinstance(error, client_errors.AccessDeniedError)
        else logging.ERROR
    )


def test_a_mapped_error_keeps_its_cause(tmp_path: Path) -> None:
    triton = FakeTriton.default()
    cause = client_errors.InferenceTimeoutError("digits: deadline")
    triton.fail["digits"] = cause

    async def check(gw: Gateway) -> None:
        from mlapi_gateway import errors

        adapter = gw.services.inference.adapter("digits")
        body = adapter.parse(orjson.dumps(PIXELS))
        with pytest.raises(errors.DeadlineExceededError) as raised:
            await adapter.predict(body, None, 1.0, "r")
        assert raised.value.__cause__ is cause

    run(tmp_path, check, triton)


def test_job_results_carry_the_problem_shape_of_http_answers(tmp_path: Path) -> None:
    triton = FakeTriton.default()
    triton.fail["digits"] = client_errors.InferenceTimeoutError("digits: deadline")

    async def check(gw: Gateway) -> None:
        http = await gw.http.post(PREDICT, json=PIXELS, headers={**gw.auth, "X-Request-ID": "h-1"})
        created = await gw.http.post(
            "/v1/jobs", json={"model": "digits", "inputs": [PIXELS]}, headers=gw.auth
        )
        assert created.status_code == 202, created.text
        job = await _finished(gw, created.headers["Location"])
        (result,) = job["results"]
        assert result["status"] == 504
        expected = {k: v for k, v in http.json().items() if k not in ("instance", "request_id")}
        problem = result["problem"]
        assert problem["request_id"] == f"{job['id']}.0"  # the id Triton saw for the input
        assert {k: v for k, v in problem.items() if k not in ("instance", "request_id")} == expected

    run(tmp_path, check, triton)


def test_sse_error_events_carry_the_problem_shape_of_http_answers(tmp_path: Path) -> None:
    triton = FakeTriton.default()
    triton.contracts["echo"] = _streaming(triton)

    async def stream(*args: Any, **kwargs: Any) -> Any:
        yield await triton.infer("echo", {"x": [[1.0, 2.0]]})
        raise client_errors.ModelCrashedError("echo: the stub died")

    triton.stream = stream  # type: ignore[method-assign]

    async def check(gw: Gateway) -> None:
        reply = await gw.http.post(
            "/v1/models/echo/stream",
            json={"inputs": {"x": [[1, 2]]}},
            headers={**gw.auth, "X-Request-ID": "s-1"},
        )
        assert reply.status_code == 200, reply.text
        events = [
            block for block in reply.text.split("\n\n") if block.startswith(("id:", "event:"))
        ]
        assert events[0].splitlines()[1] == "event: message"
        kind, data = events[-1].splitlines()[-2:]
        assert kind == "event: error"
        problem = orjson.loads(data.removeprefix("data: "))
        assert problem["type"] == TYPE_BASE + "unavailable" and problem["status"] == 503
        assert problem["request_id"] == "s-1" and problem["retry_after_s"] == 2
        assert {"type", "title", "status", "detail"} <= problem.keys()

    run(tmp_path, check, triton)


def test_unknown_models_and_versions_are_404_naming_what_exists(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        problem = _problem(
            await gw.http.post("/v1/models/cats/predict", json=PIXELS, headers=gw.auth), 404
        )
        assert problem["available"] == ["digits", "echo"]
        url = "/v1/models/digits/versions/7/predict"
        problem = _problem(await gw.http.post(url, json=PIXELS, headers=gw.auth), 404)
        assert problem["available"] == ["digits/versions/1", "digits/versions/2"]

    run(tmp_path, check)


def _streaming(triton: FakeTriton) -> Any:
    from dataclasses import replace

    return replace(triton.contracts["echo"], decoupled=True)


async def _finished(gw: Gateway, location: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = (await gw.http.get(location, headers=gw.auth)).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.01)
