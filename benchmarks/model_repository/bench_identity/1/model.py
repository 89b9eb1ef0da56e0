"""``bench_identity``: each request's ``data`` comes back as ``data_out``, untouched."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests: list) -> list:
        return [
            pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(
                        "data_out", pb_utils.get_input_tensor_by_name(r, "data").as_numpy()
                    )
                ]
            )
            for r in requests
        ]
