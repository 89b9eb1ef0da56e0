"""perf_analyzer (from the tritonclient wheel) against a real tritonserver: a short run of each
protocol writes its CSV with the figures the runner reads."""

from __future__ import annotations

import csv

import pytest

from mlapi_bench.perf_analyzer_runs import PerfAnalyzerError, check, measure
from mlapi_tools.local.triton_process import TritonServer

try:
    check()
    MISSING = ""
except PerfAnalyzerError as exc:
    MISSING = str(exc)

pytestmark = pytest.mark.skipif(bool(MISSING), reason=MISSING or "perf_analyzer runs")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_short_run_writes_perf_analyzers_csv(triton: TritonServer, tmp_path, protocol) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    result = measure("digits_classifier", protocol, url, 2, 500, tmp_path)
    with (tmp_path / result["csv"]).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    header = set(rows[0])
    assert {"Concurrency", "Inferences/Second", "p50 latency", "p99 latency", "Server Queue",
            "Server Compute Infer"} <= header  # fmt: skip
    assert float(rows[0]["Concurrency"]) == 2
    assert result["throughput_per_s"] == float(rows[0]["Inferences/Second"]) > 0
    assert 0 < result["p50 latency"] <= result["p99 latency"]


def test_a_streaming_run_of_the_generator(triton: TritonServer, tmp_path) -> None:
    result = measure("text_generator", "grpc", triton.grpc_url, 1, 500, tmp_path, streaming=True)
    assert result["throughput_per_s"] > 0 and result["p99 latency"] > 0


def test_a_failed_run_names_the_model_and_the_reason(triton: TritonServer, tmp_path) -> None:
    with pytest.raises(PerfAnalyzerError, match="no_such_model grpc c1 failed"):
        measure("no_such_model", "grpc", triton.grpc_url, 1, 500, tmp_path)
