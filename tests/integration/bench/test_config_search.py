"""The config search against a real tritonserver on a tiny grid: every candidate is loaded and
measured by perf_analyzer, the CSV and the chosen config are written, and the shipped config
is served again afterwards. No timing is asserted: the machine is shared."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator

import pytest
from tqdm import tqdm

from mlapi_backend.model_config import read_pbtxt
from mlapi_bench.config_search import Candidate, Grid, shipped_candidate
from mlapi_bench.config_search_runs import ConfigSearchError, Searcher, SearchSettings, run
from mlapi_bench.perf_analyzer_runs import PerfAnalyzerError, check
from mlapi_bench.stack import Stack, config_dict, control_client
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import MODEL_REPOSITORY, own_triton

try:
    check()
    MISSING = ""
except PerfAnalyzerError as exc:
    MISSING = str(exc)

pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=MISSING or "perf_analyzer runs"),
    pytest.mark.timeout(600),
]
MODEL = "digits_classifier"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A server of this module's own: the search reloads digits_classifier many times, and
    the session's server must not inherit what that leaves (a later interrupted sweep then
    could not unload its identity model within its minute)."""
    with own_triton(tmp_path_factory.mktemp("config-search")) as server:
        yield server


def served(triton: TritonServer) -> dict:
    with control_client(triton.http_url) as client:
        return client.model_config(MODEL)


def test_a_tiny_search_writes_its_table_and_choice(triton: TritonServer, tmp_path) -> None:
    stack = Stack(triton.http_url, triton.grpc_url, started_here=False)
    settings = SearchSettings(
        models=(MODEL,),
        # Two instances, as shipped: one instance behind a queue policy stalls (see the config).
        grid=Grid((2,), (0, 100), preferred_batch_sizes=()),
        concurrency=(1, 2),
        measurement_ms=1000,
        via=((MODEL, MODEL),),
    )
    summary = run(stack, settings, tmp_path)

    with (tmp_path / "config_search.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # Stage 1: both delays and the shipped config (one of them, or one more); stage 2: the
    # winner with the other max_batch_size (64).
    shipped_label = shipped_candidate(config_dict(MODEL_REPOSITORY / MODEL / "config.pbtxt")).label
    grid_labels = {"x2 mbs256 delay0us", "x2 mbs256 delay100us"}
    assert {r["config"] for r in rows if r["stage"] == "1"} == grid_labels | {shipped_label}
    assert any(r["max_batch_size"] == "64" and r["stage"] == "2" for r in rows)
    configs = {r["config"] for r in rows}
    for config in configs:  # every config at both levels
        assert sorted(int(r["level"]) for r in rows if r["config"] == config) == [1, 2], config
    for r in rows:
        if r["status"] == "ok":
            assert float(r["throughput_per_s"]) > 0
            assert 0 < float(r["p50_us"]) <= float(r["p99_us"])
    chosen = json.loads((tmp_path / "chosen.json").read_text())[MODEL]
    assert chosen["config"] in configs and chosen["reason"]
    assert {r["config"] for r in rows if r["chosen"] == "True"} == {chosen["config"]}
    assert chosen["config"] in summary and (tmp_path / f"frontier_{MODEL}.png").stat().st_size
    # The repository config is what the server serves again (stage 2 left mbs 64 loaded).
    shipped = read_pbtxt(MODEL_REPOSITORY / MODEL / "config.pbtxt")
    assert served(triton)["max_batch_size"] == shipped["max_batch_size"]


def test_a_refused_candidate_names_the_model_and_config(triton: TritonServer, tmp_path) -> None:
    stack = Stack(triton.http_url, triton.grpc_url, started_here=False)
    searcher = Searcher(stack, SearchSettings(), tmp_path, tqdm(disable=True))
    shipped = served(triton)
    try:
        # Triton refuses a preferred batch size above max_batch_size.
        with pytest.raises(ConfigSearchError, match=r"digits_classifier refused x2 mbs8"):
            searcher.load(MODEL, shipped, Candidate(2, 8, 0, (16,)))
    finally:
        searcher.restore(MODEL, MODEL_REPOSITORY / MODEL / "config.pbtxt")
    assert served(triton)["max_batch_size"] == shipped["max_batch_size"]
