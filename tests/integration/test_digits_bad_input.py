"""Every malformed `digits` request gets a 400 / INVALID_ARGUMENT naming the problem, and the
server keeps serving correct answers afterwards."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from mlapi_client import access

from .conftest import MODEL_REPOSITORY, DigitsCaller

GOOD = np.zeros((1, 8, 8), dtype=np.uint8)
GOOD[0, 1:7, 3:5] = 255  # a vertical bar: a "1"

CASES = {
    "wrong dtype": ({"image": GOOD.astype(np.float32)}, ["image", "FP32", "UINT8"]),
    "wrong rank": ({"image": np.zeros((1, 64), dtype=np.uint8)}, ["image", "shape"]),
    "zero size": ({"image": np.zeros((1, 0, 8), dtype=np.uint8)}, ["image", "0x8"]),
    "too small": (
        {"image": np.zeros((1, 4, 4), dtype=np.uint8)},
        ["image", "between 8 and 1024", "4x4"],
    ),
    "too large": ({"image": np.zeros((1, 1025, 16), dtype=np.uint8)}, ["image", "1025x16"]),
    "top_k zero": (
        {"image": GOOD, "top_k": np.array([[0]], dtype=np.int32)},
        ["top_k", "1..10", "got 0"],
    ),
    "top_k too big": (
        {"image": GOOD, "top_k": np.array([[11]], dtype=np.int32)},
        ["top_k", "got 11"],
    ),
    "top_k wrong dtype": (
        {"image": GOOD, "top_k": np.array([[3]], dtype=np.int64)},
        ["top_k", "INT64", "INT32"],
    ),
    "missing image": ({"top_k": np.array([[3]], dtype=np.int32)}, ["image"]),
    "batch above max": ({"image": np.zeros((65, 8, 8), dtype=np.uint8)}, ["batch", "64"]),
}


def _expect_invalid(caller: DigitsCaller, inputs: dict) -> str:
    with pytest.raises(InferenceServerException) as info:
        caller.infer("digits", inputs)
    status = info.value.status()
    assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (status, info.value.message())
    return info.value.message()


def _assert_still_serving(caller: DigitsCaller) -> None:
    assert caller.client.is_server_ready()
    assert caller.client.is_model_ready("digits")
    result = caller.digits(GOOD[0], top_k=1)
    assert result.as_numpy("labels")[0, 0] == b"1"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_client_error_naming_the_problem(caller, case):
    inputs, fragments = CASES[case]
    message = _expect_invalid(caller, inputs)
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    _assert_still_serving(caller)


BATCHED = "digits_batched_probe"


@pytest.fixture(scope="module")
def batched_digits(http_client):
    """A copy of `digits` whose batcher waits 200 ms, so requests sent together share a batch."""
    config = http_client.get_model_config("digits")
    config["name"] = BATCHED
    config["dynamic_batching"] = {"max_queue_delay_microseconds": 200_000}
    labels = MODEL_REPOSITORY / "digits_classifier" / "labels.txt"
    config["parameters"]["classifier_labels"] = {"string_value": str(labels)}
    model_py = (MODEL_REPOSITORY / "digits" / "1" / "model.py").read_bytes()
    http_client.load_model(BATCHED, config=json.dumps(config), files={"file:1/model.py": model_py})
    yield BATCHED
    http_client.unload_model(BATCHED)


def _stats(caller: DigitsCaller, model: str) -> tuple[int, int]:
    extra = {"as_json": True} if caller.protocol == "grpc" else {}
    stats = caller.client.get_inference_statistics(model, **extra)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_bad_request_does_not_fail_its_batch_mates(caller, triton, batched_digits):
    """Good requests, requests invalid at parse time and requests that fail at classify time
    (pinned to an unloaded version), sent together so that they share batches."""
    bad_shape = ({"image": np.zeros((1, 4, 4), dtype=np.uint8)}, None)
    unloaded = ({"image": GOOD}, {"model_version": "7"})
    requests = [({"image": GOOD}, None), bad_shape, ({"image": GOOD}, None), unloaded] * 4
    before = _stats(caller, batched_digits)

    url = triton.http_url if caller.protocol == "http" else triton.grpc_url

    def outcome(inputs, parameters):
        # A client per thread: tritonclient's HTTP client is not thread-safe.
        own = DigitsCaller(
            caller.protocol, access.with_key(caller.module.InferenceServerClient(url))
        )
        try:
            return own.infer(batched_digits, inputs, parameters=parameters).as_numpy("labels")[0, 0]
        except InferenceServerException as exc:
            return exc.status()
        finally:
            own.client.close()

    with ThreadPoolExecutor(len(requests)) as pool:
        outcomes = list(pool.map(lambda r: outcome(*r), requests))
    after = _stats(caller, batched_digits)
    invalid = {"400", "StatusCode.INVALID_ARGUMENT"}
    assert outcomes[0::2] == [b"1"] * 8
    assert set(outcomes[1::2]) <= invalid
    executions = after[1] - before[1]
    assert executions < len(requests) / 2  # they really were batched together
    _assert_still_serving(caller)
