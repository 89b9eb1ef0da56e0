from __future__ import annotations

import numpy as np
import pytest

from mlapi_backend.postprocessing import low_confidence_reasons, rank


def test_rank_orders_by_score_and_reports_margin_and_rest():
    probs = np.array([0.05, 0.6, 0.0, 0.2, 0, 0, 0, 0, 0, 0.1], dtype=np.float32)
    ranked = rank(probs, 3)
    assert ranked.indices.tolist() == [1, 3, 9]
    np.testing.assert_allclose(ranked.scores, [0.6, 0.2, 0.1])
    assert ranked.top1_margin == pytest.approx(0.4)
    assert ranked.rest_probability == pytest.approx(0.05, abs=1e-6)


def test_rank_ties_keep_lower_index_first():
    ranked = rank(np.full(10, 0.1, dtype=np.float32), 10)
    assert ranked.indices.tolist() == list(range(10))
    assert ranked.top1_margin == 0.0


@pytest.mark.parametrize("k", [0, 11, -1])
def test_rank_rejects_k_out_of_range(k):
    with pytest.raises(ValueError, match="k must be"):
        rank(np.full(10, 0.1, dtype=np.float32), k)


def test_rest_probability_never_negative_with_rounding():
    ranked = rank(np.full(10, 0.10000001, dtype=np.float32), 1)
    assert ranked.rest_probability == 0.0


@pytest.mark.parametrize(
    ("top", "threshold", "blank", "expected"),
    [
        (0.9, 0.5, False, []),
        (0.5, 0.5, False, []),  # at the threshold is confident
        (0.49, 0.5, False, ["top_score_below_threshold"]),
        (0.99, 0.5, True, ["blank_image"]),
        (0.1, 0.5, True, ["top_score_below_threshold", "blank_image"]),
        (0.0, 0.0, False, []),
    ],
)
def test_low_confidence_reasons(top, threshold, blank, expected):
    assert low_confidence_reasons(top, threshold, blank) == expected
