"""Model discovery over HTTP and gRPC, sync and async, against the real server."""

from __future__ import annotations

import pytest

from mlapi_client import ModelNotFoundError

from .conftest import Api


def test_server_is_live_and_ready(api: Api) -> None:
    assert api("is_live") is True
    assert api("is_ready") is True


def test_model_and_version_readiness(api: Api) -> None:
    assert api("is_ready", "digits") is True
    assert api("is_ready", "digits_classifier", 2) is True
    assert api("is_ready", "digits_classifier", 7) is False
    assert api("is_ready", "no_such_model") is False


def test_list_models_and_live_versions(api: Api) -> None:
    entries = api("list_models")
    states = {(e.name, e.version): e.state for e in entries}
    assert states[("digits_classifier", "1")] == "READY"
    assert states[("digits_classifier", "2")] == "READY"
    assert states[("digits_classifier", "3")] == "READY"
    assert states[("slow", "1")] == "READY"
    assert api("live_versions", "digits_classifier") == ["1", "2", "3", "4", "5"]
    assert api("live_versions", "no_such_model") == []


def test_contract_of_digits(api: Api) -> None:
    contract = api("contract", "digits")
    assert contract.name == "digits"
    assert contract.max_batch_size == 64
    assert contract.decoupled is False
    inputs = {t.name: t for t in contract.inputs}
    assert (inputs["image"].datatype, inputs["image"].shape, inputs["image"].optional) == (
        "UINT8",
        (-1, -1, -1),
        False,
    )
    assert (inputs["top_k"].datatype, inputs["top_k"].optional) == ("INT32", True)
    assert [t.name for t in contract.outputs] == ["labels", "scores", "low_confidence", "metadata"]


def test_contract_of_a_version_and_of_a_streaming_model(api: Api) -> None:
    classifier = api("contract", "digits_classifier", 1)
    assert classifier.inputs[0].name == "pixels"
    # One config for every version: 64 pixels for versions 1 and 2, 784 for version 3.
    assert classifier.inputs[0].shape == (-1, -1)
    assert api("contract", "stream_count").decoupled is True


def test_contract_of_an_unknown_model(api: Api) -> None:
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        api("contract", "no_such_model", retry=False)
