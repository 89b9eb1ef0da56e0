"""Test model (decoupled, ``async def execute``): stream indexes 0..count-1.

A stream raises a KeyError (a bug) when it reaches ``fail_at``; every stream yields to the
event loop between responses, so the streams of one instance interleave.
"""

from __future__ import annotations

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils

from mlapi_backend.failure_log import FailureLog
from mlapi_backend.triton_responses import request_id, send_stream

STEP_S = 0.01


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        self.failures = FailureLog(pb_utils.Logger, "stream_faults")

    async def execute(self, requests: list) -> None:
        await asyncio.gather(*(self._stream(request) for request in requests))

    async def _stream(self, request) -> None:
        sender = request.get_response_sender()
        await send_stream(sender, _chunks(request), pb_utils, self.failures, request_id(request))


async def _chunks(request):
    count, fail_at = (_scalar(request, name) for name in ("count", "fail_at"))
    for index in range(count):
        await asyncio.sleep(STEP_S)
        if index == fail_at:
            raise KeyError("provoked mid-stream")
        yield {"index": np.array([index], dtype=np.int32)}, index == count - 1


def _scalar(request, name: str) -> int:
    return int(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0])
