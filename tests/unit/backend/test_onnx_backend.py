"""The onnxruntime stand-in against small real ONNX graphs (onnxruntime runs; no server)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mlapi_backend.errors import InvalidInputError, ModelConfigError
from mlapi_backend.failure_log import FailureLog
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.onnx_backend import OnnxModel
from mlapi_backend.triton_responses import respond
from tests.unit.backend import fake_triton

BASE_CONFIG = {
    "name": "doubler",
    "backend": "onnxruntime",
    "max_batch_size": 8,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["3"]}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": ["3"]}],
    "parameters": {"intra_op_thread_count": {"string_value": "1"}},
}


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model folder with version 1 = y = 2 * x, batch dimension dynamic."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "1").mkdir()
    onnx.save(model, tmp_path / "1" / "model.onnx")
    return tmp_path


def _load(model_dir: Path, changes: dict | None = None, kind: str = "CPU") -> OnnxModel:
    config = copy.deepcopy(BASE_CONFIG)
    config.update(changes or {})
    return OnnxModel.load(ModelConfig.from_json(config), model_dir, "1", kind)


def test_requests_are_batched_into_one_run_and_split_back(model_dir):
    model = _load(model_dir)
    calls = []
    real_run = model.session.run
    model.session.run = lambda names, feed: calls.append(feed["x"].shape) or real_run(names, feed)
    requests = [{"x": np.full((n, 3), n, dtype=np.float32)} for n in (1, 2, 3)]
    results = model.run(requests)
    assert calls == [(6, 3)]  # one session run for the whole execute call
    for n, result in zip((1, 2, 3), results, strict=True):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], np.full((n, 3), 2 * n, dtype=np.float32))


def test_bad_request_does_not_fail_its_batch_mates(model_dir):
    model = _load(model_dir)
    good = {"x": np.ones((1, 3), dtype=np.float32)}
    results = model.run([good, {"x": np.ones((1, 3), dtype=np.float64)}, {}, good])
    assert isinstance(results[1], InvalidInputError) and "TYPE_FP32" in str(results[1])
    assert isinstance(results[2], InvalidInputError) and results[2].field == "x"
    for index in (0, 3):
        np.testing.assert_array_equal(results[index]["y"], 2 * good["x"])


def test_thread_parameter_reaches_the_session(model_dir):
    model = _load(model_dir, {"parameters": {"intra_op_thread_count": {"string_value": "2"}}})
    assert model.session.get_session_options().intra_op_num_threads == 2


@pytest.mark.parametrize(
    ("changes", "kind", "fragment"),
    [
        ({}, "GPU", "CPU only"),
        (
            {"sequence_batching": {"max_sequence_idle_microseconds": 100}},
            "CPU",
            "sequence batching",
        ),
        ({"model_transaction_policy": {"decoupled": True}}, "CPU", "decoupled"),
        (
            {
                "optimization": {
                    "execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt"}]}
                }
            },
            "CPU",
            "execution accelerators",
        ),
        (
            {"parameters": {"enable_mem_arena": {"string_value": "1"}}},
            "CPU",
            "unsupported parameters ['enable_mem_arena']",
        ),
        (
            {"parameters": {"intra_op_thread_count": {"string_value": "many"}}},
            "CPU",
            "must be of type int",
        ),
        (
            {"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["3"], "optional": True}]},
            "CPU",
            "optional inputs",
        ),
        (
            {"input": [{"name": "x", "data_type": "TYPE_STRING", "dims": ["3"]}]},
            "CPU",
            "TYPE_STRING",
        ),
        (
            {"input": [{"name": "x", "data_type": "TYPE_INT32", "dims": ["3"]}]},
            "CPU",
            "tensor(float)",
        ),
        ({"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]}, "CPU", "dims [4]"),
        (
            {"input": [{"name": "z", "data_type": "TYPE_FP32", "dims": ["3"]}]},
            "CPU",
            "differ from the ONNX",
        ),
        (
            {"output": [{"name": "w", "data_type": "TYPE_FP32", "dims": ["3"]}]},
            "CPU",
            "not produced",
        ),
        ({"max_batch_size": 0}, "CPU", "dims [3]"),
        ({"default_model_filename": "missing.onnx"}, "CPU", "no model file"),
    ],
)
def test_unsupported_or_inconsistent_configs_fail_load_clearly(model_dir, changes, kind, fragment):
    with pytest.raises(ModelConfigError) as info:
        _load(model_dir, changes, kind)
    assert "'doubler'" in str(info.value)
    assert fragment in str(info.value)


def test_a_request_that_fails_the_session_run_does_not_fail_its_group(model_dir):
    model = _load(model_dir)
    real_run = model.session.run

    def run(names, feed):
        if np.any(feed["x"] < 0):  # stands in for an input the graph cannot compute
            raise RuntimeError("negative input")
        return real_run(names, feed)

    model.session.run = run
    good = {"x": np.ones((2, 3), dtype=np.float32)}
    results = model.run([good, {"x": -np.ones((1, 3), dtype=np.float32)}, good])
    assert isinstance(results[1], RuntimeError)
    for index in (0, 2):
        np.testing.assert_array_equal(results[index]["y"], 2 * good["x"])


def test_a_request_that_failed_to_be_read_does_not_break_up_the_batch(model_dir):
    """Through the shared wrapper: a prepare failure stays in place, one session run serves the rest."""
    model = _load(model_dir)
    runs = []
    real_run = model.session.run
    model.session.run = lambda names, feed: runs.append(feed["x"].shape) or real_run(names, feed)
    pb = fake_triton.pb_utils()

    def read(request):
        if request.value is None:
            raise ValueError("a tensor the server could not hand over")
        return {"x": np.full((1, 3), request.value, dtype=np.float32)}

    values = [1, 2, 3, None, 5, 6, 7, 8]
    requests = [fake_triton.Request(f"r{i}", v) for i, v in enumerate(values)]
    responses = respond(requests, read, model.run, pb, FailureLog(pb.Logger, "doubler"))
    assert runs == [(7, 3)]  # one session run for the seven readable requests
    assert pb.Logger.lines[0][0] == "error" and "request 'r3'" in pb.Logger.lines[0][1]
    assert [level for level, _ in pb.Logger.lines] == ["error"]  # no batch rerun warning
    failed = responses.pop(3).error
    assert failed.code == "INTERNAL" and "ValueError" in failed.message
    for value, response in zip([v for v in values if v is not None], responses, strict=True):
        assert response.error is None
        ((name, array),) = response.tensors
        assert name == "y" and array.tolist() == [[2.0 * value] * 3]
