from __future__ import annotations

import numpy as np
import pytest

from mlapi_backend.postprocessing import low_confidence_reasons, ood_score, rank


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


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"not_a_digit": 0.4, "max_not_a_digit": None}, []),  # v1/v2: reported, not judged
        ({"not_a_digit": 0.4, "max_not_a_digit": 0.3}, ["not_a_digit_above_threshold"]),
        ({"not_a_digit": 0.3, "max_not_a_digit": 0.3}, []),  # at the threshold is confident
        ({"flag": "no_blob"}, ["no_blob"]),
        ({"flag": "too_many_blobs"}, ["too_many_blobs"]),
        ({"flag": "blank"}, ["blank_image"]),  # one name for blank on every version
    ],
)
def test_low_confidence_reasons_of_the_calibrated_versions(kwargs, expected):
    assert low_confidence_reasons(0.9, 0.5, False, **kwargs) == expected


def test_every_reason_at_once_in_a_fixed_order():
    reasons = low_confidence_reasons(
        0.2, 0.5, False, not_a_digit=0.7, max_not_a_digit=0.3, flag="fills_frame"
    )
    assert reasons == ["top_score_below_threshold", "not_a_digit_above_threshold", "fills_frame"]


def test_ood_score_is_minus_log_of_the_digit_mass():
    assert ood_score(0.0) == 0.0
    assert ood_score(0.5) == pytest.approx(np.log(2.0))
    assert ood_score(0.9) > ood_score(0.5)
    assert np.isfinite(ood_score(1.0)) and ood_score(1.0) == pytest.approx(-np.log(1e-12))
