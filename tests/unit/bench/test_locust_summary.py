"""The locust summary counts what locust's CSV says it sent, and an empty run is a failure."""

from __future__ import annotations

from pathlib import Path

from mlapi_bench.locust_run import LocustSummary, problems, summarise

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def _row(name: str, requests: int, failures: int, rps: float = 1.0) -> str:
    percentiles = ",".join(["3"] * 11) if requests else ",".join(["N/A"] * 11)
    return f"POST,{name},{requests},{failures},3,3,1,9,120,{rps},0.0,{percentiles}"


def _csv(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "locust_stats.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_summary_sums_the_named_rows_not_the_aggregate(tmp_path: Path) -> None:
    stats = _csv(
        tmp_path,
        _row("digits 8x8", 120, 2),
        _row("expected 4xx: wrong dtype", 5, 1),
        ",Aggregated,125,3,3,3,1,9,120,2.0,0.0," + ",".join(["3"] * 11),
    )
    summary = summarise(stats)
    assert summary.requests == 125
    assert summary.failures == 3
    assert summary.expected_4xx == 4
    assert [r["name"] for r in summary.rows] == ["digits 8x8", "expected 4xx: wrong dtype"]
    assert summary.rows[0]["p99_ms"] == 3.0


def test_a_name_without_requests_has_no_percentiles(tmp_path: Path) -> None:
    (row,) = summarise(_csv(tmp_path, _row("digits 8x8", 0, 0))).rows
    assert row["requests"] == 0
    assert row["p50_ms"] != row["p50_ms"]  # NaN


def test_a_run_that_made_no_request_fails_with_a_reason(tmp_path: Path) -> None:
    summary = summarise(
        _csv(tmp_path, ",Aggregated,0,0,0,0,0,0,0,0.0,0.0," + ",".join(["N/A"] * 11))
    )
    assert summary.requests == 0
    (reason,) = problems(summary, exit_status=0)
    assert "no request" in reason


def test_problems_name_failures_exceptions_and_the_exit_status() -> None:
    healthy = LocustSummary(requests=10, failures=0, expected_4xx=1, rows=[])
    assert problems(healthy, 0) == []
    broken = LocustSummary(requests=10, failures=2, expected_4xx=0, rows=[], exceptions=1)
    found = problems(broken, 1)
    assert len(found) == 3
    assert "2 failures" in found[0] and "1 exceptions" in found[1] and "status 1" in found[2]
