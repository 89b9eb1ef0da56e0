"""Percentiles and the measurement window of the harness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlapi_bench.stats import OK, Records, percentile, window_stats


def test_nearest_rank_percentiles_of_1_to_100() -> None:
    values = list(range(100, 0, -1))  # unsorted on purpose
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100


def test_percentile_returns_an_observed_value_never_an_interpolation() -> None:
    assert percentile([1.0, 10.0], 50) == 1.0
    assert percentile([1.0, 10.0], 51) == 10.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan_and_bad_percent_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 0)
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


def test_percentile_matches_numpy_inverted_cdf() -> None:
    rng = np.random.default_rng(3)
    values = rng.exponential(1.0, 999)
    for pct in (50, 90, 95, 99):
        assert percentile(values, pct) == pytest.approx(
            np.percentile(values, pct, method="inverted_cdf")
        )


def records(*rows: tuple[float, float, str]) -> Records:
    out = Records()
    for start, end, outcome in rows:
        out.add(start, end, outcome)
    return out


def test_window_keeps_requests_that_completed_inside_it() -> None:
    rec = records(
        (0.5, 0.9, OK),  # completed before the window: warm-up
        (0.9, 1.1, OK),  # started before, completed inside: counted
        (1.2, 1.5, OK),
        (1.6, 2.0, OK),  # completes exactly at t1: outside ([t0, t1))
        (1.9, 2.4, OK),  # completed after the window
    )
    stats = window_stats(rec, 1.0, 2.0)
    assert stats.completed == 2
    assert stats.throughput_per_s == pytest.approx(2.0)
    assert stats.percentiles_us[50] == pytest.approx(200_000)
    assert stats.percentiles_us[99] == pytest.approx(300_000)
    assert stats.avg_latency_us == pytest.approx(250_000)
    assert stats.sent == 3  # started in the window: 1.2, 1.6, 1.9


def test_errors_are_counted_by_kind_and_not_in_throughput_or_latency() -> None:
    rec = records(
        (1.0, 1.1, OK),
        (1.0, 1.9, "status UNAVAILABLE"),
        (1.1, 1.2, "status UNAVAILABLE"),
        (1.2, 1.3, "client_timeout"),
    )
    stats = window_stats(rec, 1.0, 3.0)
    assert stats.completed == 4
    assert stats.errors == 3
    assert stats.error_kinds == {"client_timeout": 1, "status UNAVAILABLE": 2}
    assert stats.throughput_per_s == pytest.approx(0.5)
    assert stats.percentiles_us[99] == pytest.approx(100_000)
    assert stats.error_rate == pytest.approx(0.75)


def test_window_without_successes_has_nan_latencies() -> None:
    stats = window_stats(records((1.0, 1.5, "status 400")), 1.0, 2.0)
    assert stats.throughput_per_s == 0
    assert math.isnan(stats.avg_latency_us)
    assert math.isnan(stats.percentiles_us[50])


def test_empty_window_is_refused() -> None:
    with pytest.raises(ValueError, match="empty window"):
        window_stats(Records(), 2.0, 2.0)


def test_records_from_several_processes_merge_in_order() -> None:
    merged = Records.merge([records((1, 2, OK)), records((3, 4, "x"), (5, 6, OK))])
    assert merged.start_s == [1, 3, 5]
    assert merged.outcome == [OK, "x", OK]
    assert len(merged) == 3
