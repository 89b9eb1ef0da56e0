"""Python-based Triton backend named ``onnxruntime``: runs ONNX models with ONNX Runtime on CPU.

Triton loads this file for every model whose config says ``backend: "onnxruntime"`` when no
native libtriton_onnxruntime.so is installed (the local tritonserver). On the NGC container the
native backend serves the same config. The logic lives in mlapi_backend.onnx_backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from mlapi_backend.failure_log import FailureLog
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.onnx_backend import OnnxModel
from mlapi_backend.triton_responses import respond


class TritonPythonModel:
    """One instance of a model served by the stand-in: an ONNX Runtime session on CPU."""

    def initialize(self, args: dict[str, str]) -> None:
        config = ModelConfig.from_json(json.loads(args["model_config"]))
        self.model = OnnxModel.load(
            config,
            model_dir=Path(args["model_repository"]),
            version=args["model_version"],
            instance_kind=args["model_instance_kind"],
        )
        self.failures = FailureLog(pb_utils.Logger, config.name)
        self.input_names = [spec.name for spec in config.inputs]
        pb_utils.Logger.log_info(
            f"onnxruntime stand-in: loaded '{config.name}' version {args['model_version']} "
            f"(max_batch_size={config.max_batch_size})"
        )

    def execute(self, requests: list) -> list:
        return respond(requests, self._tensors, self.model.run, pb_utils, self.failures)

    def _tensors(self, request) -> dict:
        tensors = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                tensors[name] = tensor.as_numpy()
        return tensors
