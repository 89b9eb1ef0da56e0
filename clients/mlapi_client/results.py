"""Typed results of the client's calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt


@dataclass(frozen=True)
class InferResponse:
    """One inference response: the model and version that served it and its output tensors."""

    model_name: str
    model_version: str
    outputs: dict[str, npt.NDArray[Any]] = field(repr=False)

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self.outputs[name]


@dataclass(frozen=True)
class Prediction:
    """One ranked label and its score."""

    label: str
    score: float


@dataclass(frozen=True)
class DigitsResult:
    """The ``digits`` model's answer for one image, best prediction first."""

    predictions: tuple[Prediction, ...]
    low_confidence: bool
    model_version: str
    metadata: dict[str, Any] = field(repr=False)

    @property
    def label(self) -> str:
        return self.predictions[0].label

    @property
    def score(self) -> float:
        return self.predictions[0].score

    def to_dict(self) -> dict[str, Any]:
        return {
            "predictions": [{"label": p.label, "score": p.score} for p in self.predictions],
            "low_confidence": self.low_confidence,
            "model_version": self.model_version,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class ModelEntry:
    """One row of the server's model repository index (a model version and its state)."""

    name: str
    version: str | None
    state: str | None
    reason: str | None = None


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a model: name, Triton datatype, shape with -1 for variable dims.

    The shape includes the batch dimension when the model batches (``max_batch_size > 0``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class ModelContract:
    """What a model accepts and returns, from its metadata and configuration."""

    name: str
    versions: tuple[str, ...]
    platform: str
    max_batch_size: int
    decoupled: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
