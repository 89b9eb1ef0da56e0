"""The public ``digits`` model: any-size grayscale digit -> ranked labels, scores, flag, metadata.

Thin adapter: preprocessing, routing and postprocessing live in mlapi_backend.digits_pipeline;
this file moves tensors and makes the BLS call to ``digits_classifier``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from mlapi_backend.digits_pipeline import (
    CLASSIFIER_INPUT,
    CLASSIFIER_OUTPUT,
    ClassifierError,
    DigitsPipeline,
    DigitsSettings,
)
from mlapi_backend.errors import InvalidInputError
from mlapi_backend.model_config import ModelConfig


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = ModelConfig.from_json(json.loads(args["model_config"]))
        self.pipeline = DigitsPipeline(
            DigitsSettings.from_config(config, Path(args["model_repository"]))
        )

    def execute(self, requests: list) -> list:
        parsed = []
        for request in requests:
            try:
                parsed.append(
                    self.pipeline.parse(_input(request, "image"), _input(request, "top_k"))
                )
            except InvalidInputError as exc:
                parsed.append(exc)
        responses = []
        for result in self.pipeline.run(parsed, self._classify):
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
                responses.append(
                    pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in result.items()])
                )
        return responses

    def _classify(self, version: int, pixels: np.ndarray) -> np.ndarray:
        settings = self.pipeline.settings
        response = pb_utils.InferenceRequest(
            model_name=settings.classifier_name,
            model_version=version,
            requested_output_names=[CLASSIFIER_OUTPUT],
            inputs=[pb_utils.Tensor(CLASSIFIER_INPUT, pixels)],
        ).exec()
        if response.has_error():
            raise ClassifierError(
                f"{settings.classifier_name} version {version} failed: {response.error().message()}"
            )
        return pb_utils.get_output_tensor_by_name(response, CLASSIFIER_OUTPUT).as_numpy()


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
