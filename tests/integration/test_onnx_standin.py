"""The Python onnxruntime stand-in inside the real server: batching and load-time refusals."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mlapi_client import access


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


def _fixed_width_graph() -> bytes:
    """A softmax over [N, 64] pixels with the width fixed in the graph (the shipped classifier
    versions declare it symbolic for their shared ``dims: [ -1 ]`` config)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((64, 10), 0.01, dtype=np.float32), "weights")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["pixels", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "fixed_width",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime 1.19 loads
    return bytes(model.SerializeToString())


def _load_probe(client, name: str, changes: dict) -> None:
    """Load a fixed-width softmax classifier under ``name`` with a config override."""
    config = {
        "name": name,
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "input": [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
    }
    config.update({k: v for k, v in changes.items() if v is not None})
    client.load_model(
        name, config=json.dumps(config), files={"file:1/model.onnx": _fixed_width_graph()}
    )


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


@pytest.mark.parametrize(("version", "width", "wanted"), [("3", 64, 784), ("2", 784, 64)])
def test_a_version_refuses_another_versions_width_as_invalid_input(
    grpc_client, version: str, width: int, wanted: int
) -> None:
    """The versions share dims [ -1 ]; each graph declares its own width in its metadata, and a
    request of another width is a 400 naming it, not a failure inside the session (a 500)."""
    tensor = grpcclient.InferInput("pixels", [1, width], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, width), dtype=np.float32))
    with pytest.raises(InferenceServerException) as refused:
        grpc_client.infer("digits_classifier", [tensor], model_version=version)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"dims [{wanted}] for this version" in refused.value.message()
    right = grpcclient.InferInput("pixels", [1, wanted], "FP32")
    right.set_data_from_numpy(np.zeros((1, wanted), dtype=np.float32))
    assert grpc_client.infer("digits_classifier", [right], model_version=version)
