"""Test model: sleep ``delay_ms`` (stopping early when the request is cancelled), echo it."""

from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils

POLL_S = 0.01


class TritonPythonModel:
    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            delay_ms = pb_utils.get_input_tensor_by_name(request, "delay_ms").as_numpy()
            deadline = time.monotonic() + max(int(delay_ms.reshape(-1)[0]), 0) / 1000
            while time.monotonic() < deadline and not request.is_cancelled():
                time.sleep(POLL_S)
            slept = pb_utils.Tensor("slept_ms", delay_ms.astype(np.int32))
            responses.append(pb_utils.InferenceResponse([slept]))
        return responses
