"""Test model: echo the input's shape, the request parameter ``tag`` and the input's sum."""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            tag = str(json.loads(request.parameters() or "{}").get("tag", ""))
            outputs = {
                "shape": np.array(x.shape, dtype=np.int64),
                "tag": np.array([tag.encode()], dtype=np.object_),
                "total": np.array([x.sum()], dtype=np.float32),
            }
            wanted = request.requested_output_names() or outputs
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(n, outputs[n]) for n in wanted])
            )
        return responses
