"""Figures of one version on one evaluation set, the targets, and calibration statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

# What version 3 is built to meet (fractions of each set).
TARGETS = {
    "accuracy_min": 0.97,  # every digit set
    "silent_error_max": 0.01,  # wrong and not flagged, every digit set
    "digits_flagged_max": 0.05,  # real digits flagged, every digit set
    "not_digits_flagged_min": 0.97,  # every not-digit set
    "ece_max": 0.02,  # over all digit sets together
}
ECE_BINS = 15


@dataclass(frozen=True)
class Answers:
    """What the served model said about each image of a set (top-1 label as int, -1 if none)."""

    labels: NDArray[np.int64]
    scores: NDArray[np.float64]
    flagged: NDArray[np.bool_]
    reasons: tuple[tuple[str, ...], ...]

    @classmethod
    def collect(cls, rows: Sequence[tuple[int, float, bool, Sequence[str]]]) -> Answers:
        return cls(
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.float64),
            np.array([r[2] for r in rows], dtype=np.bool_),
            tuple(tuple(r[3]) for r in rows),
        )


def expected_calibration_error(
    confidence: NDArray[np.float64], correct: NDArray[np.bool_], bins: int = ECE_BINS
) -> float:
    """ECE: the mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    if len(confidence) == 0:
        return float("nan")
    table = reliability_table(confidence, correct, bins)
    counts = np.array([row["count"] for row in table], dtype=np.float64)
    gaps = np.array(
        [abs(row["accuracy"] - row["confidence"]) if row["count"] else 0.0 for row in table]
    )
    return float((counts * gaps).sum() / counts.sum())


def reliability_table(
    confidence: NDArray[np.float64], correct: NDArray[np.bool_], bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Per confidence bin: its range, count, mean confidence and accuracy (0 when empty)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, the first also holding 0: a confidence of exactly 1 is in the last bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else 0.0,
                "accuracy": float(correct[members].mean()) if count else 0.0,
            }
        )
    return table


def confusion_matrix(truth: NDArray[np.int64], predicted: NDArray[np.int64]) -> NDArray[np.int64]:
    """10x10 counts, rows the true digit, columns the predicted one (answers without a label
    are left out)."""
    matrix = np.zeros((10, 10), dtype=np.int64)
    valid = (truth >= 0) & (truth < 10) & (predicted >= 0) & (predicted < 10)
    np.add.at(matrix, (truth[valid], predicted[valid]), 1)
    return matrix


def set_figures(is_digit: bool, truth: NDArray[np.int64], answers: Answers) -> dict[str, Any]:
    """The figures of one set: accuracy, silent errors, flagged share, ECE, reasons counted."""
    count = len(truth)
    reasons: dict[str, int] = {}
    for row in answers.reasons:
        for reason in row:
            reasons[reason] = reasons.get(reason, 0) + 1
    figures: dict[str, Any] = {
        "count": count,
        "flagged": float(answers.flagged.mean()) if count else float("nan"),
        "reasons": dict(sorted(reasons.items())),
    }
    if is_digit:
        correct = answers.labels == truth
        figures["accuracy"] = float(correct.mean())
        figures["silent_errors"] = float((~correct & ~answers.flagged).mean())
        figures["ece"] = expected_calibration_error(answers.scores, correct)
        figures["accuracy_unflagged"] = (
            float(correct[~answers.flagged].mean()) if (~answers.flagged).any() else float("nan")
        )
    return figures


def meets_targets(is_digit: bool, figures: dict[str, Any]) -> dict[str, bool]:
    """Which per-set targets one set meets (the ECE target is judged over all digit sets)."""
    if is_digit:
        return {
            "accuracy": figures["accuracy"] >= TARGETS["accuracy_min"],
            "silent_errors": figures["silent_errors"] <= TARGETS["silent_error_max"],
            "flagged": figures["flagged"] <= TARGETS["digits_flagged_max"],
        }
    return {"flagged": figures["flagged"] >= TARGETS["not_digits_flagged_min"]}
