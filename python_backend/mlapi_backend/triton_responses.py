"""Turn per-request results into Triton responses (shared by every model.py).

The library never imports ``triton_python_backend_utils``; the model passes the module in, so
this stays testable with plain pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mlapi_backend.errors import InvalidInputError


def to_responses(
    results: Sequence[Mapping[str, np.ndarray] | Exception], pb_utils: Any
) -> list[Any]:
    """One InferenceResponse per result; a failed request gets its own error, never its batch's.

    InvalidInputError -> INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT); anything else -> INTERNAL.
    """
    responses = []
    for result in results:
        if isinstance(result, Exception):
            code = (
                pb_utils.TritonError.INVALID_ARG
                if isinstance(result, InvalidInputError)
                else pb_utils.TritonError.INTERNAL
            )
            responses.append(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result), code))
            )
        else:
            tensors = [pb_utils.Tensor(name, array) for name, array in result.items()]
            responses.append(pb_utils.InferenceResponse(tensors))
    return responses
