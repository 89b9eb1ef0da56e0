"""How BlsClassifier reads a failed BLS call (a fake pb_utils: pure logic)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mlapi_backend.bls_classifier import BlsClassifier
from mlapi_backend.digits_pipeline import ClassifierError


class _ModelException(Exception):  # noqa: N818 - named after Triton's TritonModelException
    pass


def _pb(message: str, code: str, ready: bool | Exception) -> SimpleNamespace:
    def is_model_ready(model: str, version: str) -> bool:
        if isinstance(ready, Exception):
            raise ready
        return ready

    error = SimpleNamespace(message=lambda: message, code=lambda: code)
    response = SimpleNamespace(has_error=lambda: True, error=lambda: error)
    return SimpleNamespace(
        MetricFamily=_families(),
        InferenceRequest=lambda **kwargs: SimpleNamespace(exec=lambda: response),
        Tensor=lambda name, array: (name, array),
        TritonError=SimpleNamespace(UNAVAILABLE="UNAVAILABLE", INTERNAL="INTERNAL"),
        TritonModelException=_ModelException,
        is_model_ready=is_model_ready,
    )


def _failure(message: str, code: str, ready: bool | Exception) -> ClassifierError:
    classifier = BlsClassifier(_pb(message, code, ready), "digits", "digits_classifier")
    with pytest.raises(ClassifierError) as info:
        classifier.classify(2, np.zeros((1, 64), np.float32))
    return info.value


def _families():
    family = SimpleNamespace(Metric=lambda labels: SimpleNamespace(increment=lambda n: None))

    def make(**kwargs):
        return family

    make.COUNTER = "counter"  # type: ignore[attr-defined]
    return make


def test_a_dead_stub_is_a_crash_even_though_the_version_reads_ready():
    error = _failure(
        "Failed to process the request(s) for model 'digits_classifier_0_1', message: "
        "Stub process 'digits_classifier_0_1' is not healthy.",
        "INTERNAL",
        ready=True,
    )
    assert error.crashed and not error.overloaded and not error.unavailable
    assert "version 2 failed" in str(error) and "not healthy" in str(error)


def test_an_unloaded_version_is_unavailable():
    error = _failure("Model 'digits_classifier' is not ready.", "UNAVAILABLE", ready=False)
    assert error.unavailable and not error.crashed and not error.overloaded


def test_a_version_being_unloaded_is_unavailable_while_readiness_still_says_ready():
    # Seen under load: the canary's BLS call fails "is not ready" while is_model_ready still
    # answers True for a moment; the request must fall back, not fail as a shed call.
    error = _failure(
        "Failed for execute the inference request. Model 'digits_classifier' is not ready.",
        "UNAVAILABLE",
        ready=True,
    )
    assert error.unavailable and not error.overloaded and not error.crashed


def test_a_ready_version_answering_unavailable_shed_the_call():
    error = _failure("Exceeds maximum queue size", "UNAVAILABLE", ready=True)
    assert error.overloaded and not error.unavailable and not error.crashed


def test_a_refused_readiness_check_counts_as_not_ready():
    error = _failure("Server not ready", "UNAVAILABLE", ready=_ModelException("Server not ready"))
    assert error.unavailable and not error.crashed


def test_any_other_failure_is_none_of_the_retryable_kinds():
    error = _failure("onnxruntime: bad things", "INTERNAL", ready=True)
    assert not (error.unavailable or error.overloaded or error.crashed)
