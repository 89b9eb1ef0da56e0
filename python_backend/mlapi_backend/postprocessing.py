"""Turn classifier probabilities into ranked labels, scores and a low-confidence verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

DEFAULT_LOW_CONFIDENCE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Ranked:
    """Top-k of one probability row, best first."""

    indices: NDArray[np.intp]  # (k,)
    scores: NDArray[np.float32]  # (k,)
    top1_margin: float  # top score minus the runner-up's (over all classes, not only the top k)
    rest_probability: float  # 1 - sum(probabilities): the mass the model gives to "not a digit"


def rank(probabilities: NDArray[Any], k: int) -> Ranked:
    """Rank one row of class probabilities; ties keep the lower class index first."""
    row = np.asarray(probabilities, dtype=np.float32).reshape(-1)
    if not 1 <= k <= row.size:
        raise ValueError(f"k must be in 1..{row.size}, got {k}")
    order = np.argsort(-row, kind="stable")
    margin = float(row[order[0]] - row[order[1]]) if row.size > 1 else float(row[order[0]])
    rest = float(max(0.0, 1.0 - float(row.sum(dtype=np.float64))))
    return Ranked(order[:k], row[order[:k]], margin, rest)


def low_confidence_reasons(top_score: float, threshold: float, blank: bool) -> list[str]:
    """Why a prediction should not be trusted (empty list: confident).

    The verdict is the top score against the threshold; a blank image (no ink contrast) is
    never a confident digit, whatever the classifier says.
    """
    reasons = []
    if top_score < threshold:
        reasons.append("top_score_below_threshold")
    if blank:
        reasons.append("blank_image")
    return reasons
