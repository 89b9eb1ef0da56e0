"""The Python onnxruntime stand-in inside the real server: batching and load-time refusals."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mlapi_client import access

from .conftest import MODEL_REPOSITORY


def _stats(client, model: str, version: str) -> dict:
    stats = client.get_inference_statistics(model, version, as_json=True)["model_stats"][0]
    return {
        "inferences": int(stats.get("inference_count", 0)),
        "executions": int(stats.get("execution_count", 0)),
    }


def test_concurrent_requests_are_batched_into_fewer_executions(triton, grpc_client):
    """32 threads x 20 single-row requests: the dynamic batcher merges them into fewer runs."""
    before = _stats(grpc_client, "digits_classifier", "1")
    errors: list[Exception] = []

    def worker() -> None:
        client = access.with_key(grpcclient.InferenceServerClient(triton.grpc_url))
        try:
            tensor = grpcclient.InferInput("pixels", [1, 64], "FP32")
            tensor.set_data_from_numpy(
                np.random.default_rng(0).random((1, 64), dtype=np.float32) * 16
            )
            for _ in range(20):
                client.infer("digits_classifier", [tensor], model_version="1")
        except Exception as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    after = _stats(grpc_client, "digits_classifier", "1")
    inferences = after["inferences"] - before["inferences"]
    executions = after["executions"] - before["executions"]
    assert inferences == 640
    assert executions < inferences


BAD_CONFIGS = {
    "unknown parameter": (
        {"parameters": {"enable_mem_arena": {"string_value": "1"}}},
        "unsupported parameters",
    ),
    "wrong dtype": (
        {"input": [{"name": "pixels", "data_type": "TYPE_FP64", "dims": [64]}]},
        "TYPE_FP64",
    ),
    "wrong dims": (
        {"input": [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [63]}]},
        "dims [63]",
    ),
    "sequence batching": ({"sequence_batching": {}, "dynamic_batching": None}, "sequence batching"),
}


def _load_probe(client, name: str, changes: dict) -> None:
    """Load digits_classifier v1's ONNX file under ``name`` with a config override."""
    config = {
        "name": name,
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "input": [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    }
    config.update({k: v for k, v in changes.items() if v is not None})
    onnx_bytes = (MODEL_REPOSITORY / "digits_classifier" / "1" / "model.onnx").read_bytes()
    client.load_model(name, config=json.dumps(config), files={"file:1/model.onnx": onnx_bytes})


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_unsupported_config_fails_load_with_clear_message(http_client, case):
    changes, fragment = BAD_CONFIGS[case]
    with pytest.raises(InferenceServerException) as info:
        _load_probe(http_client, "standin_probe", changes)
    assert "standin_probe" in info.value.message()
    assert fragment in info.value.message()
    assert not http_client.is_model_ready("standin_probe")
    assert http_client.is_server_ready() and http_client.is_model_ready("digits_classifier", "1")


def test_valid_config_loads_through_the_same_path(http_client):
    """Control for the refusals above: the same override with a valid config loads and serves."""
    threads = {"parameters": {"intra_op_thread_count": {"string_value": "1"}}}
    _load_probe(http_client, "standin_probe_ok", threads)
    try:
        assert http_client.is_model_ready("standin_probe_ok")
    finally:
        http_client.unload_model("standin_probe_ok")
