"""The ``digits`` request tensors and the typed result, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlapi_client.digits import digits_inputs, digits_parameters, digits_result
from mlapi_client.errors import InvalidInputError, ServerError
from mlapi_client.results import InferResponse


def test_inputs_are_a_batch_of_one() -> None:
    inputs = digits_inputs(np.zeros((9, 7), np.uint8), top_k=4)
    assert inputs["image"].shape == (1, 9, 7)
    assert inputs["image"].dtype == np.uint8
    assert inputs["top_k"].tolist() == [[4]]
    assert inputs["top_k"].dtype == np.int32
    assert "top_k" not in digits_inputs(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize("top_k", ["3", 2.5, True])
def test_top_k_must_be_an_integer(top_k: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        digits_inputs(np.zeros((8, 8), np.uint8), top_k=top_k)  # type: ignore[arg-type]
    assert info.value.field == "top_k"


def test_version_parameter() -> None:
    assert digits_parameters(None) is None
    assert digits_parameters("2") == {"model_version": 2}
    with pytest.raises(InvalidInputError):
        digits_parameters("latest")


def response(metadata: dict) -> InferResponse:
    return InferResponse(
        model_name="digits",
        model_version="1",
        outputs={
            "labels": np.array([[b"7", b"1"]], dtype=np.object_),
            "scores": np.array([[0.9, 0.05]], dtype=np.float32),
            "low_confidence": np.array([[False]]),
            "metadata": np.array([[json.dumps(metadata).encode()]], dtype=np.object_),
        },
    )


def test_result_is_ranked_and_names_the_classifier_version() -> None:
    result = digits_result(response({"classifier": {"name": "digits_classifier", "version": "2"}}))
    assert [(p.label, round(p.score, 2)) for p in result.predictions] == [("7", 0.9), ("1", 0.05)]
    assert (result.label, result.low_confidence, result.model_version) == ("7", False, "2")
    assert result.metadata["classifier"]["name"] == "digits_classifier"
    assert result.to_dict()["predictions"][0]["label"] == "7"


def test_response_outside_the_contract_is_a_server_error() -> None:
    broken = InferResponse("digits", "1", {"labels": np.array([[b"7"]], dtype=np.object_)})
    with pytest.raises(ServerError):
        digits_result(broken)


def test_scores_and_metadata_are_exactly_what_the_model_sent() -> None:
    scores = np.array([[0.9999467, 4.2069321e-05, 7.5968069e-06]], dtype=np.float32)
    metadata = {
        "classifier": {"name": "digits_classifier", "version": "3"},
        "cost": {"cpu_us": 812.5, "tiny": 5e-324, "huge": 1.7976931348623157e308},
        "count": 12345678901234567890123,  # past 64 bits
        "note": "ünïcode ✓",
        "nested": [[1, 2.5], {"a": None, "b": True}],
    }
    got = digits_result(
        InferResponse(
            "digits",
            "1",
            {
                "labels": np.array([[b"4", b"9", b"7"]], dtype=np.object_),
                "scores": scores,
                "low_confidence": np.array([[True]]),
                "metadata": np.array([[json.dumps(metadata).encode()]], dtype=np.object_),
            },
        )
    )
    assert [p.score for p in got.predictions] == [float(s) for s in scores.reshape(-1)]
    assert all(type(p.score) is float and type(p.label) is str for p in got.predictions)
    assert got.metadata == metadata and got.low_confidence is True
    assert got.model_version == "3"


@pytest.mark.parametrize("text", ['{"x": 1e400, "classifier": {}}', '{"x": NaN}'])
def test_metadata_json_reads_as_python_json_reads_it(text: str) -> None:
    outputs = response({})
    outputs.outputs["metadata"] = np.array([[text.encode()]], dtype=np.object_)
    got = digits_result(outputs).metadata
    assert json.dumps(got) == json.dumps(json.loads(text))  # inf and nan included


def test_metadata_that_is_not_json_is_a_server_error() -> None:
    outputs = response({})
    outputs.outputs["metadata"] = np.array([[b"{not json"]], dtype=np.object_)
    with pytest.raises(ServerError, match="outside its contract"):
        digits_result(outputs)
