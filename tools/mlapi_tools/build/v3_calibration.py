"""Calibration of digits_classifier version 3: temperature, low-confidence thresholds, report.

Fitted on the calibration split only. The temperature minimises the negative log-likelihood of
the 11-class softmax. The thresholds flag a result when the top digit's probability is below
``min_score`` or P(not a digit) = 1 - sum(probabilities) is above ``max_not_a_digit``; they are
the pair that flags the most calibration non-digit images while flagging at most
FLAGGED_DIGITS_TARGET of the calibration digits and leaving at most SILENT_ERRORS_TARGET of them
wrong and unflagged. An image normalise_digit flags counts as flagged (and never as an error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlapi_tools.build.digits_v3_data import NOT_A_DIGIT, Samples

# The contract on held-out digits is <= 5 % flagged and <= 1 % silent errors; the fit aims a
# little lower on the calibration split to leave room for the held-out sets.
FLAGGED_DIGITS_LIMIT = 0.05
SILENT_ERRORS_LIMIT = 0.01
NOT_DIGITS_FLAGGED_GOAL = 0.97
FLAGGED_DIGITS_TARGET = 0.04
SILENT_ERRORS_TARGET = 0.008
ECE_BINS = 15
SCORE_GRID = np.round(np.linspace(0.0, 0.99, 100), 4)
NOT_A_DIGIT_GRID = np.round(np.linspace(0.01, 1.0, 100), 4)


@dataclass(frozen=True)
class Fitted:
    """What the calibration split fixed."""

    temperature: float
    min_score: float
    max_not_a_digit: float
    calibration_nll: tuple[float, float]  # before, after
    calibration_rates: dict[str, float]


def softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise softmax."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def nll(logits: NDArray[np.float64], y: NDArray[np.int64], temperature: float) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: NDArray[np.float64], y: NDArray[np.int64]) -> float:
    """The temperature minimising the NLL (bounded search over log T)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=(-3.0, 3.0), method="bounded"
    )
    return float(np.exp(result.x))


def expected_calibration_error(probs: NDArray[np.float64], y: NDArray[np.int64]) -> float:
    """Top-label ECE over ECE_BINS equal-width confidence bins."""
    if len(y) == 0:
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    total = 0.0
    for b in range(ECE_BINS):
        in_bin = bins == b
        if in_bin.any():
            total += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(total)


def model_flags(
    probs: NDArray[np.float64], min_score: float, max_not_a_digit: float
) -> NDArray[np.bool_]:
    """Which rows the thresholds flag (11-class probabilities)."""
    return np.asarray(
        (probs[:, :NOT_A_DIGIT].max(axis=1) < min_score) | (probs[:, NOT_A_DIGIT] > max_not_a_digit)
    )


def rates(
    samples: Samples,
    probs: NDArray[np.float64],
    min_score: float,
    max_not_a_digit: float,
    digits: bool = True,
) -> dict[str, float]:
    """Accuracy, flagged and silent-error rates of one set, over every raw image drawn."""
    flagged = model_flags(probs, min_score, max_not_a_digit)
    drawn = max(samples.drawn, 1)
    out = {"drawn": float(samples.drawn), "normaliser_flagged": samples.flagged / drawn}
    out["flagged"] = (samples.flagged + int(flagged.sum())) / drawn
    if not digits:
        return out
    correct = probs[:, :NOT_A_DIGIT].argmax(axis=1) == samples.y
    out["accuracy"] = float(correct.mean()) if len(correct) else 0.0
    out["accuracy_of_drawn"] = int(correct.sum()) / drawn
    out["silent_errors"] = int((~correct & ~flagged).sum()) / drawn
    return out


def _pooled(
    sets: dict[str, Samples], logits: dict[str, NDArray[np.float64]], names: list[str]
) -> tuple[Samples, NDArray[np.float64]]:
    flagged_by_label: dict[int, int] = {}
    for n in names:
        for k, v in sets[n].flagged_by_label.items():
            flagged_by_label[k] = flagged_by_label.get(k, 0) + v
    pooled = Samples(
        np.concatenate([sets[n].x for n in names]),
        np.concatenate([sets[n].y for n in names]),
        sum(sets[n].flagged for n in names),
        flagged_by_label,
    )
    return pooled, np.concatenate([logits[n] for n in names])


def _search(
    digits: Samples,
    digit_probs: NDArray[np.float64],
    junk: Samples,
    junk_probs: NDArray[np.float64],
) -> tuple[float, float]:
    correct = digit_probs[:, :NOT_A_DIGIT].argmax(axis=1) == digits.y
    top = digit_probs[:, :NOT_A_DIGIT].max(axis=1)
    junk_top = junk_probs[:, :NOT_A_DIGIT].max(axis=1)
    best: tuple[float, float, float, float] | None = None  # (-junk flagged, flagged, s, r)
    fallback: tuple[float, float, float] | None = None  # (silent, s, r)
    for s in SCORE_GRID:
        low = top < s
        junk_low = junk_top < s
        for r in NOT_A_DIGIT_GRID:
            flagged = low | (digit_probs[:, NOT_A_DIGIT] > r)
            flag_rate = (digits.flagged + flagged.sum()) / digits.drawn
            silent = (~correct & ~flagged).sum() / digits.drawn
            if flag_rate > FLAGGED_DIGITS_TARGET:
                continue
            if fallback is None or silent < fallback[0]:
                fallback = (float(silent), float(s), float(r))
            if silent > SILENT_ERRORS_TARGET:
                continue
            junk_flagged = junk.flagged + (junk_low | (junk_probs[:, NOT_A_DIGIT] > r)).sum()
            candidate = (-junk_flagged / junk.drawn, float(flag_rate), float(s), float(r))
            if best is None or candidate < best:
                best = candidate
    if best is not None:
        return best[2], best[3]
    if fallback is None:
        raise RuntimeError("v3 calibration: normalise_digit alone flags too many digits")
    return fallback[1], fallback[2]


def fit(sets: dict[str, Samples], logits: dict[str, NDArray[np.float64]]) -> Fitted:
    """Temperature and thresholds from the calibration split's sets."""
    cal_names = [n for n in sets if n.startswith("calibration/")]
    digit_names = [n for n in cal_names if n != "calibration/not_digits"]
    _, all_logits = _pooled(sets, logits, cal_names)
    all_y = np.concatenate([sets[n].y for n in cal_names])
    temperature = fit_temperature(all_logits, all_y)
    digits, digit_logits = _pooled(sets, logits, digit_names)
    junk = sets["calibration/not_digits"]
    digit_probs = softmax(digit_logits / temperature)
    junk_probs = softmax(logits["calibration/not_digits"] / temperature)
    min_score, max_not = _search(digits, digit_probs, junk, junk_probs)
    cal_rates = rates(digits, digit_probs, min_score, max_not)
    cal_rates["not_digits_flagged"] = rates(junk, junk_probs, min_score, max_not, False)["flagged"]
    return Fitted(
        temperature,
        min_score,
        max_not,
        (nll(all_logits, all_y, 1.0), nll(all_logits, all_y, temperature)),
        cal_rates,
    )


def _rounded(values: dict[str, float]) -> dict[str, float | int]:
    return {k: (int(v) if k == "drawn" else round(v, 5)) for k, v in values.items()}


def report(
    sets: dict[str, Samples], logits: dict[str, NDArray[np.float64]], fitted: Fitted
) -> dict[str, Any]:
    """The calibration and evaluation part of metrics.json (the shape docs/models.md lists)."""
    t, s, r = fitted.temperature, fitted.min_score, fitted.max_not_a_digit
    test_names = [n for n in sets if n.startswith("test/")]
    digit_tests = [n for n in test_names if n != "test/not_digits"]
    accuracy = {
        n.removeprefix("test/"): _rounded(rates(sets[n], softmax(logits[n] / t), s, r))
        for n in digit_tests
    }
    pooled, pooled_logits = _pooled(sets, logits, digit_tests)
    accuracy["all_held_out_digits"] = _rounded(rates(pooled, softmax(pooled_logits / t), s, r))
    junk = sets["test/not_digits"]
    not_digits = _rounded(rates(junk, softmax(logits["test/not_digits"] / t), s, r, False))
    return {
        "temperature": round(t, 6),
        "low_confidence": {
            "min_score": s,
            "max_not_a_digit": r,
            "rule": "flag when max(probabilities) < min_score or 1 - sum(probabilities) > "
            "max_not_a_digit, or when normalise_digit flags the image",
            "fitted_on": "calibration split",
            "targets": {
                "max_flagged_digits": FLAGGED_DIGITS_LIMIT,
                "max_silent_errors": SILENT_ERRORS_LIMIT,
                "min_flagged_not_digits": NOT_DIGITS_FLAGGED_GOAL,
            },
            "calibration": _rounded(fitted.calibration_rates),
        },
        "input": {
            "name": "pixels",
            "side": 28,
            "layout": "row-major, flattened to 784",
            "ink": 1.0,
            "paper": 0.0,
            "preprocessing": "mlapi_backend.digit_normalise.normalise_digit",
        },
        "accuracy": accuracy,
        "not_digits": not_digits,
        "ece": {
            "held_out_digits_before": round(
                expected_calibration_error(softmax(pooled_logits), pooled.y), 5
            ),
            "held_out_digits_after": round(
                expected_calibration_error(softmax(pooled_logits / t), pooled.y), 5
            ),
            "bins": ECE_BINS,
            "calibration_nll_before_after": [round(v, 5) for v in fitted.calibration_nll],
        },
    }
