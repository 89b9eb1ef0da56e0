from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from mlapi_backend.errors import InvalidInputError, UnavailableError
from mlapi_backend.triton_responses import to_responses


class _Error:
    INVALID_ARG, INTERNAL, UNAVAILABLE = "INVALID_ARG", "INTERNAL", "UNAVAILABLE"

    def __init__(self, message: str, code: str) -> None:
        self.message, self.code = message, code


FAKE_PB_UTILS = SimpleNamespace(
    TritonError=_Error,
    Tensor=lambda name, array: (name, array),
    InferenceResponse=lambda tensors=None, error=None: SimpleNamespace(
        tensors=tensors, error=error
    ),
)


def test_each_result_gets_its_own_response_and_error_code():
    results = [
        {"y": np.ones(2)},
        InvalidInputError("image", "UINT8", "FP32"),
        RuntimeError("classifier down"),
        UnavailableError("digits_classifier version 1 is configured but not ready"),
    ]
    ok, invalid, internal, unavailable = to_responses(results, FAKE_PB_UTILS)
    assert ok.error is None and ok.tensors[0][0] == "y"
    assert (invalid.error.code, invalid.error.message) == (
        "INVALID_ARG",
        "input 'image': expected UINT8, got FP32",
    )
    assert internal.error.code == "INTERNAL" and "classifier down" in internal.error.message
    assert unavailable.error.code == "UNAVAILABLE" and "version 1" in unavailable.error.message


def test_a_shed_decode_step_is_unavailable_and_a_failed_one_internal():
    from mlapi_backend.generation import DecoderError, DecoderUnavailableError
    from mlapi_backend.triton_responses import error_code

    shed = DecoderUnavailableError("text_decoder failed: Request timeout expired")
    assert error_code(shed, FAKE_PB_UTILS) == "UNAVAILABLE"
    assert error_code(DecoderError("text_decoder failed: boom"), FAKE_PB_UTILS) == "INTERNAL"
    assert error_code(InvalidInputError("seed", "an integer >= 0", "-1"), FAKE_PB_UTILS) == (
        "INVALID_ARG"
    )
