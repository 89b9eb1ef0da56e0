"""Streaming from the decoupled ``stream_count`` test model: gRPC stream and HTTP SSE."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mlapi_client import InvalidInputError, ModelNotFoundError, UnsupportedRequestError
from mlapi_tools.local.triton_process import TritonServer

from .conftest import Api, metric_value

CANCELLED = "mlapi_test_stream_cancelled_total"
STEPS, STEP_MS = 3000, 20  # the cancelled stream: 60 s of sleeps if it ran to its end


def count_inputs(count: int, delay_ms: int = 0) -> dict[str, np.ndarray]:
    return {"count": np.array([count], np.int32), "delay_ms": np.array([delay_ms], np.int32)}


def test_stream_delivers_every_response_in_order(api: Api) -> None:
    responses = api.stream("stream_count", count_inputs(5, 2))
    assert [int(r["index"][0]) for r in responses] == [0, 1, 2, 3, 4]
    assert [r["text_output"][0].decode() for r in responses][-1] == "token 4"
    assert {(r.model_name, r.model_version) for r in responses} == {("stream_count", "1")}


def test_stopping_early_cancels_the_request_on_the_server(api: Api, triton: TritonServer) -> None:
    before = metric_value(triton, CANCELLED)
    started = time.monotonic()
    responses = api.stream("stream_count", count_inputs(STEPS, STEP_MS), stop_after=3)
    assert [int(r["index"][0]) for r in responses] == [0, 1, 2]
    # The model counts a cancellation only when it notices one before its last response, and
    # its sleeps alone make an uncancelled stream last STEPS * STEP_MS (60 s) however fast the
    # machine: the counter moving well before that proves the server stopped streaming.
    uncancelled_s = STEPS * STEP_MS / 1000
    while metric_value(triton, CANCELLED) <= before:
        assert time.monotonic() - started < uncancelled_s / 2, "the server kept streaming"
        time.sleep(0.05)
    assert metric_value(triton, CANCELLED) == before + 1


def test_stream_errors_are_typed(api: Api) -> None:
    with pytest.raises(ModelNotFoundError):
        api.stream("no_such_model", count_inputs(1))
    with pytest.raises(InvalidInputError) as info:
        api.stream("stream_count", {"delay_ms": np.array([1], np.int32)})  # 'count' missing
    assert (info.value.field, info.value.expected) == ("count", "INT32 [1]")


def test_infer_on_a_streaming_model_says_to_stream(api: Api) -> None:
    with pytest.raises(UnsupportedRequestError, match="decoupled"):
        api("infer", "stream_count", count_inputs(1), retry=False)


def test_stream_from_the_public_text_generator(api: Api) -> None:
    inputs = {
        "text_input": np.array(["The "], dtype=np.object_),
        "max_tokens": np.array([8], np.int32),
        "seed": np.array([7], np.int64),
    }
    responses = api.stream("text_generator", inputs)
    assert responses, "no response"
    assert all(r.model_name == "text_generator" for r in responses)
    text = "".join(r["text_output"][0].decode() for r in responses)
    assert text
    finish = responses[-1]["finish_reason"][0].decode()
    assert finish in ("length", "stop")
    assert int(responses[-1]["completion_tokens"][0]) <= 8
