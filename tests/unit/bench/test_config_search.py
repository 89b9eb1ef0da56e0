"""The config search's pure parts: grid, choice and its reason, frontier, config.pbtxt edit."""

from __future__ import annotations

import math

import pytest

from mlapi_backend.model_config import read_pbtxt
from mlapi_bench.config_search import (
    Candidate,
    ConfigEditError,
    Grid,
    choose,
    edit_pbtxt,
    frontier,
    shipped_candidate,
)
from tests.conftest import MODEL_REPOSITORY


def rows_of(candidate: Candidate, points: list[tuple[int, float, float]], status: str = "ok"):
    return [
        {"config": candidate.label, "level": level, "throughput_per_s": tput,
         "p99_us": p99_ms * 1e3, "status": status}
        for level, tput, p99_ms in points
    ]  # fmt: skip


A = Candidate(1, 64, 0)
B = Candidate(2, 64, 100)
C = Candidate(2, 64, 2000, (4, 8))


def test_the_grid_crosses_instances_and_delays_then_varies_the_winner() -> None:
    grid = Grid((1, 2), (0, 500), ((4, 8), (16, 32)), (16,))
    crossed = [Candidate(1, 64, 0), Candidate(1, 64, 500),
               Candidate(2, 64, 0), Candidate(2, 64, 500)]  # fmt: skip
    assert grid.stage1(Candidate(2, 64, 500)) == crossed
    # The shipped config is measured too when the grid does not hold it.
    assert grid.stage1(Candidate(2, 64, 1000, (8,))) == [*crossed, Candidate(2, 64, 1000, (8,))]
    # Preferred sizes above max_batch_size are skipped; a smaller max_batch_size drops them.
    assert Grid((1,), (0,), ((4, 8), (128,)), (16, 64)).stage2(Candidate(2, 64, 500, (32, 64))) == [
        Candidate(2, 64, 500, (4, 8)),
        Candidate(2, 16, 500, ()),
    ]
    assert grid.stage2(Candidate(2, 64, 500)) == [
        Candidate(2, 64, 500, (4, 8)),
        Candidate(2, 64, 500, (16, 32)),
        Candidate(2, 16, 500),
    ]


def test_the_highest_throughput_under_the_budget_wins() -> None:
    rows = (rows_of(A, [(1, 900, 2), (16, 1500, 60)])  # fastest but over budget
            + rows_of(B, [(1, 800, 2), (16, 1300, 20)])
            + rows_of(C, [(1, 500, 5), (16, 1100, 30)]))  # fmt: skip
    choice = choose(rows, [A, B, C], budget_ms=50)
    assert choice.candidate == B
    assert choice.throughput_per_s == 1300 and choice.worst_p99_ms == 20
    assert "p99 <= 50 ms" in choice.reason and "2 of 3 configs qualify" in choice.reason


def test_ties_go_to_the_lower_p99_at_the_lowest_load() -> None:
    rows = (rows_of(A, [(1, 900, 4), (16, 1300, 20)])
            + rows_of(B, [(1, 900, 2), (16, 1280, 20)]))  # fmt: skip
    choice = choose(rows, [A, B], budget_ms=50)
    assert choice.candidate == B
    assert "2 configs within 5%" in choice.reason and "c1 (2.0 ms)" in choice.reason


def test_unstable_configs_are_out_and_counted() -> None:
    rows = (rows_of(A, [(1, math.nan, math.nan)], "unstable")
            + rows_of(B, [(1, 800, 2)]))  # fmt: skip
    choice = choose(rows, [A, B], budget_ms=50)
    assert choice.candidate == B and "1 unstable" in choice.reason
    with pytest.raises(ValueError, match="stably"):
        choose(rows_of(A, [(1, math.nan, math.nan)], "unstable"), [A], 50)


def test_over_budget_everywhere_takes_the_lowest_worst_p99_and_says_so() -> None:
    rows = rows_of(A, [(1, 900, 80)]) + rows_of(B, [(1, 800, 70)])
    choice = choose(rows, [A, B], budget_ms=50)
    assert choice.candidate == B and choice.reason.startswith("no config kept p99 under 50 ms")


def test_the_frontier_keeps_only_undominated_points() -> None:
    rows = [{"throughput_per_s": t, "p99_us": p} for t, p in
            ((100, 1), (200, 5), (150, 6), (300, 9), (250, 4))]  # fmt: skip
    assert [(r["throughput_per_s"], r["p99_us"]) for r in frontier(rows)] == [
        (100, 1), (250, 4), (300, 9)]  # fmt: skip


def test_the_shipped_candidate_is_read_from_the_config() -> None:
    shipped = read_pbtxt(MODEL_REPOSITORY / "text_embedder_encoder" / "config.pbtxt")
    candidate = shipped_candidate(shipped)
    assert candidate.max_batch_size == shipped["max_batch_size"]
    assert candidate.matches(shipped)


def test_apply_keeps_the_queue_policy_and_instance_kind() -> None:
    shipped = read_pbtxt(MODEL_REPOSITORY / "digits_classifier" / "config.pbtxt")
    changed = C.apply(shipped)
    assert changed["max_batch_size"] == 64
    assert changed["instance_group"] == [{"kind": "KIND_CPU", "count": 2}]
    batching = changed["dynamic_batching"]
    assert batching["max_queue_delay_microseconds"] == 2000
    assert batching["preferred_batch_size"] == [4, 8]
    assert batching["default_queue_policy"] == shipped["dynamic_batching"]["default_queue_policy"]
    assert C.matches(changed) and not B.matches(changed)
    assert "preferred_batch_size" not in B.apply(changed)["dynamic_batching"]


@pytest.mark.parametrize("model", ["digits", "digits_classifier", "text_embedder_encoder"])
def test_the_pbtxt_edit_changes_only_the_searched_lines(model: str, tmp_path) -> None:
    path = MODEL_REPOSITORY / model / "config.pbtxt"
    text = path.read_text()
    edited = edit_pbtxt(text, C)
    (tmp_path / "config.pbtxt").write_text(edited)
    parsed = read_pbtxt(tmp_path / "config.pbtxt")
    assert C.matches(parsed)
    shipped = read_pbtxt(path)
    for key in set(shipped) - {"max_batch_size", "dynamic_batching", "instance_group"}:
        assert parsed[key] == shipped[key]
    # Only the searched lines differ; every comment stays.
    removed = set(text.splitlines()) - set(edited.splitlines())
    assert all(
        any(word in line for word in ("max_batch_size", "max_queue_delay", "preferred", "count"))
        for line in removed
    )
    assert [line for line in text.splitlines() if line.strip().startswith("#")] == [
        line for line in edited.splitlines() if line.strip().startswith("#")
    ]
    # Back to no preferred sizes: the line goes again.
    assert "preferred_batch_size" not in edit_pbtxt(edited, B)


def test_a_config_without_the_expected_lines_is_refused() -> None:
    with pytest.raises(ConfigEditError, match="max_queue_delay"):
        edit_pbtxt('name: "m"\nmax_batch_size: 8\ninstance_group [ { count: 1 } ]\n', A)
