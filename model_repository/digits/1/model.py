"""The public ``digits`` model: any-size grayscale digit -> ranked labels, scores, flag, metadata.

Thin adapter: parsing, routing between classifier versions and postprocessing live in
mlapi_backend.digits_pipeline; this file moves tensors, makes the BLS calls to the classifier
and records routing metrics on Triton's metrics endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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
from mlapi_backend.triton_responses import to_responses


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = ModelConfig.from_json(json.loads(args["model_config"]))
        settings = DigitsSettings.from_config(config, Path(args["model_repository"]))
        self.pipeline = DigitsPipeline(settings)
        self.backend = _BlsClassifier(settings.model_name, settings.classifier_name)
        pb_utils.Logger.log_info(
            f"{settings.model_name}: traffic policy {json.dumps(settings.policy.to_dict())}"
        )

    def execute(self, requests: list) -> list:
        parsed = []
        for request in requests:
            try:
                parameters = json.loads(request.parameters() or "{}")
                parsed.append(
                    self.pipeline.parse(
                        _input(request, "image"), _input(request, "top_k"), parameters
                    )
                )
            except InvalidInputError as exc:
                parsed.append(exc)
        return to_responses(self.pipeline.run(parsed, self.backend), pb_utils)


class _BlsClassifier:
    """ClassifierBackend over BLS, with routing and shadow counters on the metrics endpoint."""

    def __init__(self, model: str, classifier: str) -> None:
        self.model = model
        self.classifier = classifier
        self.routed = pb_utils.MetricFamily(
            name="mlapi_routed_requests_total",
            description="Images served per classifier version and routing reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.shadowed = pb_utils.MetricFamily(
            name="mlapi_shadow_comparisons_total",
            description="Shadow-version comparisons of the top-1 label (agree, disagree, error)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.metrics: dict[tuple[str, ...], object] = {}

    def classify(self, version: int, pixels: np.ndarray) -> np.ndarray:
        response = pb_utils.InferenceRequest(
            model_name=self.classifier,
            model_version=version,
            requested_output_names=[CLASSIFIER_OUTPUT],
            inputs=[pb_utils.Tensor(CLASSIFIER_INPUT, pixels)],
        ).exec()
        if response.has_error():
            raise ClassifierError(
                f"{self.classifier} version {version} failed: {response.error().message()}",
                unavailable=not pb_utils.is_model_ready(self.classifier, str(version)),
            )
        return pb_utils.get_output_tensor_by_name(response, CLASSIFIER_OUTPUT).as_numpy()

    def live_versions(self, candidates: Iterable[int]) -> list[int]:
        return [v for v in candidates if pb_utils.is_model_ready(self.classifier, str(v))]

    def record_routes(self, version: int, reason: str, count: int) -> None:
        labels = {"model": self.model, "version": str(version), "routing": reason}
        self._counter(self.routed, labels).increment(count)

    def record_shadow(
        self, primary: int, shadow: int, agreed: int, disagreed: int, failed: int
    ) -> None:
        for outcome, count in (("agree", agreed), ("disagree", disagreed), ("error", failed)):
            if count:
                labels = {
                    "model": self.model,
                    "primary": str(primary),
                    "shadow": str(shadow),
                    "outcome": outcome,
                }
                self._counter(self.shadowed, labels).increment(count)

    def _counter(self, family, labels: dict[str, str]):
        key = (str(id(family)), *sorted(labels.items()))
        metric = self.metrics.get(key)
        if metric is None:
            metric = self.metrics[key] = family.Metric(labels=labels)
        return metric


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
