"""Test model (decoupled): stream ``count`` numbered responses, ``delay_ms`` apart."""

from __future__ import annotations

import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        # The family must outlive its metric, so both are kept.
        self.metric_family = pb_utils.MetricFamily(
            name="mlapi_test_stream_cancelled_total",
            description="Streams of the stream_count test model stopped by cancellation",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.cancelled = self.metric_family.Metric(labels={"model": args["model_name"]})

    def execute(self, requests: list) -> None:
        for request in requests:
            self._stream(request)

    def _stream(self, request) -> None:
        sender = request.get_response_sender()
        count_tensor = pb_utils.get_input_tensor_by_name(request, "count")
        if count_tensor is None:
            error = pb_utils.TritonError(
                "input 'count': expected INT32 [1], got no 'count' input",
                pb_utils.TritonError.INVALID_ARG,
            )
            sender.send(
                pb_utils.InferenceResponse(error=error),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
            )
            return
        count = int(count_tensor.as_numpy().reshape(-1)[0])
        delay = pb_utils.get_input_tensor_by_name(request, "delay_ms")
        delay_s = 0.0 if delay is None else int(delay.as_numpy().reshape(-1)[0]) / 1000
        for index in range(count):
            if index:
                time.sleep(delay_s)
            if sender.is_cancelled():
                self.cancelled.increment(1)
                break
            sender.send(
                pb_utils.InferenceResponse(
                    [
                        pb_utils.Tensor("index", np.array([index], dtype=np.int32)),
                        pb_utils.Tensor(
                            "text_output", np.array([f"token {index}".encode()], dtype=np.object_)
                        ),
                    ]
                )
            )
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
