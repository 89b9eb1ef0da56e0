"""Test model: ``doubled = 2 * value`` and the size of the batch it was served in.

Marked values provoke failures inside ``execute``: -1 a bug (KeyError) while reading that
request, -2 a bug (ZeroDivisionError) in the batched step, -3 an invalid input, -4 an
unavailable dependency. The shared wrapper must fail only the marked request. -5 and -6 are
reading bugs of their own kinds (a repeated one, and one that marks a point in the log); -7
fails the batched step whichever of its requests runs (a systematic fault).
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from mlapi_backend.errors import InvalidInputError, UnavailableError
from mlapi_backend.failure_log import FailureLog
from mlapi_backend.triton_responses import respond

BUG_READING, BUG_IN_BATCH, INVALID, UNAVAILABLE = -1, -2, -3, -4
BUG_REPEATED, BUG_MARK, BUG_EVERY_STEP = -5, -6, -7


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.failures = FailureLog(pb_utils.Logger, "batch_faults")

    def execute(self, requests: list) -> list:
        size = len(requests)

        def run(values: list) -> list:
            if BUG_IN_BATCH in values:
                raise ZeroDivisionError("provoked in the batched step")
            if BUG_EVERY_STEP in values:
                raise ConnectionError("provoked in every batched step")
            return [
                value
                if isinstance(value, Exception)
                else {
                    "doubled": np.array([[2 * value]], dtype=np.int32),
                    "batch_size": np.array([[size]], dtype=np.int32),
                }
                for value in values
            ]

        return respond(requests, _value, run, pb_utils, self.failures)


def _value(request) -> int:
    value = int(pb_utils.get_input_tensor_by_name(request, "value").as_numpy().reshape(-1)[0])
    if value == BUG_READING:
        return {}["provoked while reading the request"]
    if value == INVALID:
        raise InvalidInputError("value", "an integer other than -3", str(value))
    if value == UNAVAILABLE:
        raise UnavailableError("value -4: the service it needs is not loaded")
    if value == BUG_REPEATED:
        raise RuntimeError("provoked the same way for every request")
    if value == BUG_MARK:
        raise LookupError("provoked to mark a point in the log")
    return value
