"""The public ``digits`` model: any-size grayscale digit -> ranked labels, scores, flag, metadata.

Thin adapter: parsing, routing between classifier versions and postprocessing live in
mlapi_backend.digits_pipeline, the BLS calls and metrics in mlapi_backend.bls_classifier.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mlapi_backend.blas_threads import limit_blas_threads
from mlapi_backend.bls_classifier import BlsClassifier
from mlapi_backend.digits_pipeline import DigitsPipeline, DigitsSettings, ParsedRequest
from mlapi_backend.failure_log import FailureLog
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.prediction_metrics import start_observability
from mlapi_backend.triton_responses import respond


class TritonPythonModel:
    """``digits`` in Triton: a batch goes through the pipeline, one call per classifier version."""

    def initialize(self, args: dict[str, str]) -> None:
        blas = limit_blas_threads()  # idle OpenBLAS threads spin: 2x the CPU per request
        config = ModelConfig.from_json(json.loads(args["model_config"]))
        settings = DigitsSettings.from_config(config, Path(args["model_repository"]))
        self.pipeline = DigitsPipeline(settings)
        self.backend = BlsClassifier(pb_utils, settings.model_name, settings.classifier_name)
        self.failures = FailureLog(pb_utils.Logger, settings.model_name)
        live = self.pipeline.check_policy(self.backend)  # refuses a policy naming a dead version
        policy = json.dumps(settings.policy.to_dict())
        checked = "repository policy, checked per request" if live is None else f"live {live}"
        pb_utils.Logger.log_info(f"{settings.model_name}: traffic policy {policy} ({checked})")
        inputs = {v: p.input_kind for v, p in sorted(settings.profiles.items())}
        pb_utils.Logger.log_info(f"{settings.model_name}: classifier inputs by version {inputs}")
        limited = blas or "none (no OpenBLAS loaded, or OPENBLAS_NUM_THREADS set)"
        pb_utils.Logger.log_info(f"{settings.model_name}: OpenBLAS limited to 1 thread: {limited}")
        # Prediction distributions, drift and cost per version: a thread off the request path
        # (parameter "observability": "off" turns them off).
        self.observed = start_observability(pb_utils, settings, args, config.parameters, os.environ)

    def execute(self, requests: list) -> list:
        self.observed.publish()  # statistics: the thread's queued metric updates leave here
        self.started = time.perf_counter()  # cost: the batch's compute time starts here
        return respond(requests, self._parse, self._run, pb_utils, self.failures)

    def _parse(self, request) -> ParsedRequest:
        parameters = json.loads(request.parameters() or "{}")
        image, top_k = _input(request, "image"), _input(request, "top_k")
        return self.pipeline.parse(image, top_k, parameters)

    def _run(self, parsed: list) -> list:
        results = self.pipeline.run(parsed, self.backend)
        # cost into the metadata, and the statistics: one queue append
        self.observed.record(parsed, results, time.perf_counter() - self.started)
        return results

    def finalize(self) -> None:
        self.observed.stop()


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
