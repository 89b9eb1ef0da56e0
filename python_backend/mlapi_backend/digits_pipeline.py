"""The public ``digits`` model: request parsing, classifier calls grouped by version, responses.

``digits`` is a Python (BLS) model rather than an ensemble because each request's response must
name the classifier version that served it, and the version is chosen per request. The model.py
adapter supplies a ``classify(version, pixels) -> probabilities`` callable (a BLS call); all
other logic is here so that it is unit-tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlapi_backend.errors import InvalidInputError, MlapiBackendError, ModelConfigError
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.postprocessing import (
    DEFAULT_LOW_CONFIDENCE_THRESHOLD,
    low_confidence_reasons,
    rank,
)
from mlapi_backend.preprocessing import PreprocessedDigit, preprocess_digit

INPUTS = {"image": "TYPE_UINT8", "top_k": "TYPE_INT32"}
OUTPUTS = {
    "labels": "TYPE_STRING",
    "scores": "TYPE_FP32",
    "low_confidence": "TYPE_BOOL",
    "metadata": "TYPE_STRING",
}
CLASSIFIER_INPUT = "pixels"
CLASSIFIER_OUTPUT = "probabilities"

Outputs = dict[str, np.ndarray]
Classify = Callable[[int, np.ndarray], np.ndarray]


class ClassifierError(MlapiBackendError):
    """The classifier call failed (BLS error); every request routed to that version fails."""


@dataclass(frozen=True)
class DigitsSettings:
    model_name: str
    classifier_name: str
    default_version: int
    threshold: float
    default_top_k: int
    max_top_k: int
    labels: tuple[str, ...]

    @classmethod
    def from_config(cls, config: ModelConfig, model_dir: Path) -> DigitsSettings:
        config.require_tensors(INPUTS, OUTPUTS)
        if config.max_batch_size < 1:
            raise ModelConfigError(f"model '{config.name}': needs max_batch_size >= 1")
        labels_path = model_dir / config.string_parameter(
            "classifier_labels", "../digits_classifier/labels.txt"
        )
        try:
            labels = tuple(
                line.strip() for line in labels_path.read_text().splitlines() if line.strip()
            )
        except OSError as exc:
            raise ModelConfigError(
                f"model '{config.name}': cannot read labels {labels_path}: {exc}"
            ) from exc
        max_top_k = config.int_parameter("max_top_k", 10, 1, len(labels))
        return cls(
            model_name=config.name,
            classifier_name=config.string_parameter("classifier_model", "digits_classifier"),
            default_version=config.int_parameter("default_classifier_version", 1, 1, 2**31 - 1),
            threshold=config.float_parameter(
                "low_confidence_threshold", DEFAULT_LOW_CONFIDENCE_THRESHOLD, 0.0, 1.0
            ),
            default_top_k=config.int_parameter("default_top_k", 3, 1, max_top_k),
            max_top_k=max_top_k,
            labels=labels,
        )


@dataclass(frozen=True)
class ParsedRequest:
    """A valid request: its preprocessed images, k, and the classifier version to use."""

    digits: tuple[PreprocessedDigit, ...]
    top_k: int
    version: int
    routing: str

    @property
    def pixels(self) -> np.ndarray:
        return np.stack([d.pixels for d in self.digits])


class DigitsPipeline:
    def __init__(self, settings: DigitsSettings) -> None:
        self.settings = settings

    def parse(self, image: np.ndarray | None, top_k: np.ndarray | None) -> ParsedRequest:
        """Validate one request's tensors (batch axis first) and preprocess its images."""
        s = self.settings
        if image is None:
            raise InvalidInputError(
                "image", "a UINT8 tensor [batch, height, width]", "no 'image' input"
            )
        if image.ndim != 3 or image.shape[0] < 1:
            raise InvalidInputError(
                "image",
                "shape [batch, height, width] with batch >= 1",
                f"shape {list(image.shape)}",
            )
        k = s.default_top_k
        if top_k is not None:
            values = np.asarray(top_k).reshape(-1)
            if values.size != image.shape[0] or np.unique(values).size != 1:
                raise InvalidInputError(
                    "top_k", "one value shared by every image of the request", f"{values.tolist()}"
                )
            k = int(values[0])
            if not 1 <= k <= s.max_top_k:
                raise InvalidInputError("top_k", f"an integer in 1..{s.max_top_k}", str(k))
        digits = tuple(preprocess_digit(img) for img in image)
        return ParsedRequest(digits, k, s.default_version, "default")

    def run(
        self, parsed: Sequence[ParsedRequest | Exception], classify: Classify
    ) -> list[Outputs | Exception]:
        """Classify every valid request, one classifier call per version, and build responses."""
        # Exceptions pass through unchanged; every ParsedRequest is replaced below.
        results: list[Outputs | Exception] = [
            item if isinstance(item, Exception) else RuntimeError("not classified")
            for item in parsed
        ]
        groups: dict[int, list[tuple[int, ParsedRequest]]] = {}
        for index, item in enumerate(parsed):
            if isinstance(item, ParsedRequest):
                groups.setdefault(item.version, []).append((index, item))
        for version, members in groups.items():
            try:
                probabilities = classify(version, np.concatenate([r.pixels for _, r in members]))
            except ClassifierError as exc:
                for index, _ in members:
                    results[index] = exc
                continue
            offset = 0
            for index, request in members:
                count = len(request.digits)
                results[index] = self.respond(request, probabilities[offset : offset + count])
                offset += count
        return results

    def respond(self, request: ParsedRequest, probabilities: np.ndarray) -> Outputs:
        """Ranked labels/scores, low-confidence flag and metadata for each image of a request."""
        s = self.settings
        labels, scores, flags, metadata = [], [], [], []
        for digit, row in zip(request.digits, probabilities, strict=True):
            ranked = rank(row, request.top_k)
            reasons = low_confidence_reasons(float(ranked.scores[0]), s.threshold, digit.blank)
            labels.append([s.labels[i].encode() for i in ranked.indices])
            scores.append(ranked.scores)
            flags.append([bool(reasons)])
            metadata.append(
                [
                    json.dumps(
                        self._metadata(
                            request, digit, ranked.top1_margin, ranked.rest_probability, reasons
                        )
                    ).encode()
                ]
            )
        return {
            "labels": np.array(labels, dtype=np.object_),
            "scores": np.stack(scores).astype(np.float32),
            "low_confidence": np.array(flags, dtype=np.bool_),
            "metadata": np.array(metadata, dtype=np.object_),
        }

    def _metadata(
        self,
        request: ParsedRequest,
        digit: PreprocessedDigit,
        margin: float,
        rest: float,
        reasons: list[str],
    ) -> dict[str, Any]:
        s = self.settings
        return {
            "model": s.model_name,
            "classifier": {"name": s.classifier_name, "version": str(request.version)},
            "routing": request.routing,
            "preprocessing": digit.metadata(),
            "low_confidence_threshold": s.threshold,
            "low_confidence_reasons": reasons,
            "top1_margin": round(margin, 6),
            "not_a_digit_probability": round(rest, 6),
        }
