"""How study rounds are combined and summarised."""

from __future__ import annotations

import pytest

from mlapi_bench.runs import (
    StudySettings,
    _plot_groups,
    best_rounds,
    queue_delay_markdown,
    study_sections,
)
from mlapi_bench.study import Variant


def point(
    model: str,
    label: str,
    level: int,
    throughput: float,
    p99_us: float = 1000.0,
    batch: float = 1.0,
) -> dict:
    return {
        "model": model,
        "protocol": "grpc",
        "label": label,
        "mode": "concurrency",
        "level": level,
        "throughput_per_s": throughput,
        "p99_us": p99_us,
        "server_avg_batch_size": batch,
    }


def test_best_round_of_each_point_is_kept() -> None:
    rows = [
        point("m", "a", 1, 100.0),
        point("m", "a", 1, 140.0),
        point("m", "a", 2, 90.0),
        point("m", "b", 1, 50.0),
    ]
    best = {(r["label"], r["level"]): r["throughput_per_s"] for r in best_rounds(rows)}
    assert best == {("a", 1): 140.0, ("a", 2): 90.0, ("b", 1): 50.0}


def test_gain_compares_the_best_batching_variant_with_batching_off() -> None:
    off, on0, on5, off2 = (
        Variant(None).label,
        Variant(0).label,
        Variant(500).label,
        Variant(None, instances=2).label,
    )
    rows = [
        point("digits", off, 8, 500.0, 30_000),
        point("digits", on0, 8, 900.0, 15_000),
        point("digits", on5, 8, 1000.0, 14_000, batch=4.0),
        point("digits", off2, 8, 5000.0),  # batching off with 2 instances is not "on"
    ]
    sections, gains = study_sections(rows, StudySettings(models=("digits",), concurrency=(8,)))
    (gain,) = gains
    assert gain["best"] == on5
    assert gain["gain"] == pytest.approx(2.0)
    assert gain["on_p99_ms"] == pytest.approx(14.0)
    assert gain["on_batch"] == 4.0
    assert "digits: throughput and p99" in sections[0]


def test_queue_delay_table_lists_off_and_single_instance_delays_only() -> None:
    rows = [
        point("m", Variant(None).label, 1, 10.0),
        point("m", Variant(100).label, 1, 20.0),
        point("m", Variant(500, (4, 8)).label, 1, 30.0),
        point("m", Variant(500, instances=2).label, 1, 40.0),
    ]
    text = queue_delay_markdown(rows, ["m"], [1, 8], "grpc", "cmd")
    assert "| batching off x1 | 10" in text
    assert "| delay 100us x1 | 20" in text
    assert "pref" not in text and "x2" not in text
    assert "Reproduce: `cmd`" in text


def test_plots_split_per_model_only_when_there_are_many_series() -> None:
    few = [point("digits", "a", 1, 1.0), point("bench_identity", "floor", 1, 1.0)]
    assert [s for s, _ in _plot_groups(few)] == [""]
    many = [point("digits", str(i), 1, 1.0) for i in range(8)] + [
        point("m2", str(i), 1, 1.0) for i in range(4)
    ]
    many.append(point("bench_identity", "floor", 1, 1.0))
    groups = dict(_plot_groups(many))
    assert set(groups) == {"_digits", "_m2"}
    assert sum(r["model"] == "bench_identity" for r in groups["_m2"]) == 1
    assert len(groups["_digits"]) == 9


def test_via_study_measures_the_calling_model_and_needs_one_switched_model() -> None:
    settings = StudySettings(models=("digits_classifier",), via="digits")
    assert settings.measured_models == ("digits",)
    with pytest.raises(ValueError, match="exactly one"):
        StudySettings(models=("digits", "digits_classifier"), via="digits")
