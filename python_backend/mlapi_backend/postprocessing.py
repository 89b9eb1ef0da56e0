"""Turn classifier probabilities into ranked labels, scores and a low-confidence verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

DEFAULT_LOW_CONFIDENCE_THRESHOLD = 0.5
# Floor of the digit mass in ood_score: keeps the score finite (at most ~27.6 nats) when the
# reject class takes everything.
MIN_DIGIT_MASS = 1e-12


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


def low_confidence_reasons(
    top_score: float,
    threshold: float,
    blank: bool,
    *,
    not_a_digit: float = 0.0,
    max_not_a_digit: float | None = None,
    flag: str | None = None,
) -> list[str]:
    """Why a prediction should not be trusted (empty list: confident).

    The top score below ``threshold``; a blank image (no ink contrast), never a confident digit
    whatever the classifier says; the not-a-digit mass above ``max_not_a_digit`` (None: not
    judged); and ``flag``, the preprocessing's reason the image holds no readable digit (a blank
    flag reads ``blank_image`` on every version).
    """
    reasons = []
    if top_score < threshold:
        reasons.append("top_score_below_threshold")
    if max_not_a_digit is not None and not_a_digit > max_not_a_digit:
        reasons.append("not_a_digit_above_threshold")
    if blank or flag == "blank":
        reasons.append("blank_image")
    elif flag is not None:
        reasons.append(flag)
    return reasons


def ood_score(rest_probability: float) -> float:
    """Energy-style out-of-distribution score: -log of the mass the ten digits hold, in nats.

    With the reject class's logit among the classifier's own, this is the free energy of the
    digit classes minus that of all classes (the probabilities already include any temperature):
    0 for an image that is surely a digit, growing without bound as the reject class takes over.
    """
    return float(-math.log(max(1.0 - rest_probability, MIN_DIGIT_MASS)))
