"""Choose the semantic cache's cosine threshold on labelled pairs, and measure it.

On the selection split: among the thresholds (each pair's similarity is a candidate), keep those
whose false-hit rate's one-sided 95 % Clopper-Pearson upper bound is at most ``max_false_hit``,
and take the one of highest F1 (ties: the higher threshold). On the held-back split: precision,
recall and false-hit rate of that threshold, with the same bound, per hard-negative kind too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

CONFIDENCE = 0.95


def false_hit_upper(false_hits: int, negatives: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a rate of ``false_hits`` in ``negatives``."""
    if negatives <= 0:
        return 1.0
    if false_hits >= negatives:
        return 1.0
    return float(beta.ppf(confidence, false_hits + 1, negatives - false_hits))


@dataclass(frozen=True)
class Scores:
    """What a threshold does on a set of pairs."""

    threshold: float
    positives: int
    negatives: int
    hits: int  # true hits (paraphrases at or above the threshold)
    false_hits: int
    precision: float
    recall: float
    f1: float
    false_hit_rate: float
    false_hit_upper_95: float


def score(similarity: Sequence[float], label: Sequence[int], threshold: float) -> Scores:
    """Score ``threshold`` on pairs of ``similarity`` and ``label`` (1: may hit)."""
    sim, lab = np.asarray(similarity, dtype=np.float64), np.asarray(label, dtype=np.int64)
    hit = sim >= threshold
    tp = int(np.sum(hit & (lab == 1)))
    fp = int(np.sum(hit & (lab == 0)))
    pos, neg = int(np.sum(lab == 1)), int(np.sum(lab == 0))
    fn = pos - tp
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / pos if pos else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return Scores(
        threshold=float(threshold),
        positives=pos,
        negatives=neg,
        hits=tp,
        false_hits=fp,
        precision=precision,
        recall=recall,
        f1=f1,
        false_hit_rate=fp / neg if neg else 0.0,
        false_hit_upper_95=false_hit_upper(fp, neg),
    )


def choose(
    similarity: Sequence[float], label: Sequence[int], max_false_hit: float = 0.01
) -> Scores:
    """Return the admissible threshold of highest F1 (see the module); raise if none is."""
    candidates = sorted({float(s) for s in similarity} | {1.0 + 1e-9})
    best: Scores | None = None
    for threshold in candidates:
        scores = score(similarity, label, threshold)
        if scores.false_hit_upper_95 > max_false_hit:
            continue
        if (
            best is None
            or scores.f1 > best.f1
            or (scores.f1 == best.f1 and threshold > best.threshold)
        ):
            best = scores
    if best is None:
        raise ValueError("no threshold keeps the false-hit bound: too few negatives")
    return best


def report(
    similarity: Sequence[float],
    label: Sequence[int],
    kind: Sequence[str],
    split: Sequence[str],
    max_false_hit: float = 0.01,
) -> dict[str, Any]:
    """Choose on ``selection``, measure on ``heldback``, overall and per negative kind."""
    sim, lab = np.asarray(similarity), np.asarray(label)
    kinds, splits = np.asarray(kind), np.asarray(split)
    chosen = choose(sim[splits == "selection"], lab[splits == "selection"], max_false_hit)
    out: dict[str, Any] = {"max_false_hit": max_false_hit, "selection": asdict(chosen)}
    held = splits == "heldback"
    out["heldback"] = asdict(score(sim[held], lab[held], chosen.threshold))
    per_kind = {}
    for name in sorted(set(kinds[lab == 0])):
        mask = held & ((kinds == name) | (lab == 1))
        s = score(sim[mask], lab[mask], chosen.threshold)
        per_kind[name] = {
            "negatives": s.negatives,
            "false_hits": s.false_hits,
            "false_hit_rate": s.false_hit_rate,
            "false_hit_upper_95": s.false_hit_upper_95,
        }
    out["heldback_by_kind"] = per_kind
    return out
