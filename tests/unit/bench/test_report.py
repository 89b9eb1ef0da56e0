"""Result rows, the CSV's perf_analyzer columns, the JSON summary and the ratios."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mlapi_bench.clients import Endpoint
from mlapi_bench.inprocess import InProcessResult
from mlapi_bench.limits import ratios
from mlapi_bench.load import LoadSpec
from mlapi_bench.measure import Measurement
from mlapi_bench.report import clean, results_dir, row, table, write_csv, write_json
from mlapi_bench.server_stats import ServerWindow
from mlapi_bench.stats import WindowStats

# perf_analyzer r24.10 `-f` header, in order, less Client Send/Recv (not measured here).
PERF_ANALYZER_HEADER = [
    "Concurrency",
    "Inferences/Second",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
]


def measurement(
    model: str = "digits",
    level: float = 4,
    mode: str = "concurrency",
    throughput: float = 1000.0,
    batch: float = 2.0,
    protocol: str = "grpc",
) -> Measurement:
    client = WindowStats(
        window_s=2.0,
        completed=2002,
        errors=2,
        error_kinds={"status UNAVAILABLE": 2},
        throughput_per_s=throughput,
        avg_latency_us=4000.0,
        percentiles_us={50: 3500.0, 90: 5000.0, 95: 6000.0, 99: 9000.0},
        sent=2010,
    )
    server = ServerWindow(
        requests=2000,
        failures=0,
        queue_us=500.0,
        compute_input_us=50.0,
        compute_infer_us=2000.0,
        compute_output_us=150.0,
        avg_batch_size=batch,
    )
    spec = LoadSpec(Endpoint(protocol, "127.0.0.1:1"), model, mode, level)
    return Measurement(spec=spec, label="shipped", processes=1, client=client, server=server)


def test_row_uses_perf_analyzer_names_and_derives_network_time() -> None:
    r = row(measurement())
    assert r["Concurrency"] == 4
    assert r["Inferences/Second"] == 1000.0
    assert r["Server Queue"] == 500.0
    assert r["p99 latency"] == 9000.0
    # avg client latency minus everything the server accounted for
    assert r["Network+Server Send/Recv"] == pytest.approx(4000.0 - 2700.0)
    assert r["errors"] == 2
    assert r["error_kinds"] == "status UNAVAILABLE=2"
    assert r["sent_per_s"] == pytest.approx(1005.0)


def test_csv_header_starts_with_perf_analyzer_columns_in_order(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_csv(path, [row(measurement(level=1)), row(measurement(level=8))])
    with path.open() as handle:
        reader = csv.reader(handle)
        header = next(reader)
        body = list(reader)
    assert header[: len(PERF_ANALYZER_HEADER)] == PERF_ANALYZER_HEADER
    assert "model" in header and "errors" in header
    assert [line[0] for line in body] == ["1", "8"]
    assert len(body[0]) == len(header)


def test_request_rate_rows_get_the_request_rate_column(tmp_path: Path) -> None:
    path = tmp_path / "rate.csv"
    write_csv(path, [row(measurement(mode="request_rate", level=250.0))])
    header = path.read_text().splitlines()[0].split(",")
    assert header[0] == "Request Rate"
    assert "Concurrency" not in header


def test_json_summary_is_strict_json_with_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json(path, clean({"rows": [{"p99": math.nan, "x": (1, 2)}]}))
    assert json.loads(path.read_text()) == {"rows": [{"p99": None, "x": [1, 2]}]}


def test_results_go_to_a_dated_folder(tmp_path: Path) -> None:
    out = results_dir(tmp_path, datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert out == tmp_path / "2026-01-02" / "030405"
    assert out.is_dir()


def test_table_is_markdown_with_rounded_numbers() -> None:
    text = table([{"a": "x", "b": 1234.567, "c": 0.456}], [("a", "A"), ("b", "B"), ("c", "C")])
    assert text.splitlines() == ["| A | B | C |", "|---|---|---|", "| x | 1235 | 0.46 |"]


def test_ratios_against_identity_and_in_process_at_the_formed_batch() -> None:
    rows = [
        row(measurement("bench_identity", level=4, throughput=4000.0)),
        row(measurement("digits", level=4, throughput=1000.0, batch=3.6)),
        row(measurement("digits", level=4, throughput=900.0, protocol="http")),
    ]
    limits = [InProcessResult("digits", b, 2000.0 * b, 10.0) for b in (1, 2, 4, 8)]
    out = ratios(rows, limits)
    assert len(out) == 2
    grpc = out[0]
    assert grpc["vs_identity"] == pytest.approx(0.25)
    assert grpc["in_process_batch"] == 4
    assert grpc["vs_in_process"] == pytest.approx(1000.0 / 8000.0)
    assert math.isnan(out[1]["vs_identity"])  # no identity measured over HTTP
