"""Turn per-request results into Triton responses (shared by every model.py).

The library never imports ``triton_python_backend_utils``; the model passes the module in, so
this stays testable with plain pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlapi_backend.errors import InvalidInputError, UnavailableError


def error_code(error: Exception, pb_utils: Any) -> Any:
    """The TritonError code for a per-request failure: 400, 503 or (a bug, a crash) 500."""
    if isinstance(error, InvalidInputError):
        return pb_utils.TritonError.INVALID_ARG
    if isinstance(error, UnavailableError):
        return pb_utils.TritonError.UNAVAILABLE
    return pb_utils.TritonError.INTERNAL


def to_responses(
    results: Sequence[Mapping[str, np.ndarray] | Exception], pb_utils: Any
) -> list[Any]:
    """One InferenceResponse per result; a failed request gets its own error, never its batch's.

    InvalidInputError -> INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT), UnavailableError ->
    UNAVAILABLE (HTTP 503), anything else -> INTERNAL.
    """
    responses = []
    for result in results:
        if isinstance(result, Exception):
            code = error_code(result, pb_utils)
            responses.append(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result), code))
            )
        else:
            tensors = [pb_utils.Tensor(name, array) for name, array in result.items()]
            responses.append(pb_utils.InferenceResponse(tensors))
    return responses
