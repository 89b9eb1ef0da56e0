"""ClassifierBackend over BLS: classifier calls, readiness checks and routing metrics in Triton.

The model passes ``triton_python_backend_utils`` in, so this library module never imports it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.digits_pipeline import CLASSIFIER_INPUT, CLASSIFIER_OUTPUT, ClassifierError

# A classifier whose Python stub died (the CPU stand-in runs in one): python_backend
# (python_be.cc, r24.10) fails each call with INTERNAL "Stub process '<instance>' is not
# healthy." while readiness still says ready, until the model is reloaded. The status is the
# one any model failure gets, so this fixed message is the only signal.
DEAD_STUB = re.compile(r"Stub process '[^']+' is not healthy")
# A version being unloaded fails a BLS call with "Model '<name>' is not ready" while Triton's
# readiness check may still say ready for a moment after (seen under load, when a canary was
# pulled): the error itself then says the version is going away.
NOT_READY = re.compile(r"Model '[^']+' is not ready")


class BlsClassifier:
    """Calls ``classifier`` by BLS; counts routes and shadow comparisons on the metrics port."""

    def __init__(self, pb_utils: Any, model: str, classifier: str) -> None:
        self.pb = pb_utils
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
        self._metrics: dict[tuple[Any, ...], Any] = {}

    def classify(self, version: int, pixels: NDArray[np.float32]) -> NDArray[np.float32]:
        response = self.pb.InferenceRequest(
            model_name=self.classifier,
            model_version=version,
            requested_output_names=[CLASSIFIER_OUTPUT],
            inputs=[self.pb.Tensor(CLASSIFIER_INPUT, pixels)],
        ).exec()
        if response.has_error():
            error = response.error()
            message = error.message()
            crashed = DEAD_STUB.search(message) is not None
            going = NOT_READY.search(message) is not None
            ready = crashed or (not going and self._ready(version))
            # A ready classifier answering UNAVAILABLE shed the call from its queue (full or
            # timed out): the caller's request is then unavailable too, not broken.
            raise ClassifierError(
                f"{self.classifier} version {version} failed: {message}",
                unavailable=not ready,
                overloaded=ready and error.code() == self.pb.TritonError.UNAVAILABLE,
                crashed=crashed,
            )
        return np.asarray(self.pb.get_output_tensor_by_name(response, CLASSIFIER_OUTPUT).as_numpy())

    def _ready(self, version: int) -> bool:
        try:
            return bool(self.pb.is_model_ready(self.classifier, str(version)))
        except self.pb.TritonModelException:  # "Server not ready": still starting or stopping
            return False

    def live_versions(self, candidates: Iterable[int]) -> list[int]:
        try:
            return [v for v in candidates if self.pb.is_model_ready(self.classifier, str(v))]
        except self.pb.TritonModelException as exc:
            # Triton answers "Server not ready" while it is still starting (loading models).
            raise ClassifierError(
                f"cannot check which versions of {self.classifier} are ready: {exc}",
                unavailable=True,
            ) from exc

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

    def _counter(self, family: Any, labels: dict[str, str]) -> Any:
        key = (id(family), *sorted(labels.items()))
        if key not in self._metrics:
            self._metrics[key] = family.Metric(labels=labels)
        return self._metrics[key]
