"""The harness against a real tritonserver: it runs, and it counts what the server counts.

No timing is asserted: the machine is shared. The identity model is loaded into the session's
server through the repository API, the same path the harness takes with `make serve`'s server.
Every call to Triton here goes through the project's client, as the harness's own do.
"""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlapi_bench.cli import main
from mlapi_bench.clients import Endpoint, open_client
from mlapi_bench.load import LoadSpec, drive, prime
from mlapi_bench.measure import Phases, Runner
from mlapi_bench.payloads import IDENTITY_MODEL
from mlapi_bench.scenarios import default_mix
from mlapi_bench.server_stats import ServerCounters
from mlapi_bench.stack import MODEL_REPOSITORY, config_dict, ensure_identity, stack, unload_identity
from mlapi_bench.study import StudyError, Variant, switching
from mlapi_client import NO_RETRY, Client, access
from mlapi_tools.local.triton_process import TritonServer

QUICK = Phases(warmup_s=0.2, window_s=0.8)
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def server(triton: TritonServer) -> TritonServer:
    ensure_identity(triton.http_url)
    ensure_identity(triton.http_url)  # idempotent: already ready
    return triton


@pytest.fixture
def client(server: TritonServer) -> Iterator[Client]:
    with Client(server.http_url, protocol="http", retry=NO_RETRY) as control:
        yield control


async def _counted_run(
    endpoint: Endpoint, spec: LoadSpec, duration_s: float
) -> tuple[int, int, list[str]]:
    observer = open_client(endpoint)
    try:
        await prime(spec)  # payloads built, connection and model warm before the schedule
        before = ServerCounters.parse(await observer.inference_statistics(spec.model), spec.model)
        begin = time.monotonic() + 0.1
        records = await drive(spec, begin, begin + duration_s)
        after = ServerCounters.parse(await observer.inference_statistics(spec.model), spec.model)
    finally:
        await observer.close()
    return len(records), (after - before).success_count, records.outcome


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_request_sent_is_one_the_server_counted(server: TritonServer, protocol: str) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    endpoint = Endpoint(protocol, url)
    spec = LoadSpec(endpoint, IDENTITY_MODEL, "concurrency", 3)
    sent, counted, outcomes = asyncio.run(_counted_run(endpoint, spec, 0.5))
    assert sent > 0
    assert set(outcomes) == {""}
    assert counted == sent


def test_closed_loop_window_with_server_times(server: TritonServer) -> None:
    spec = LoadSpec(Endpoint("grpc", server.grpc_url), "digits_classifier", "concurrency", 2)
    with Runner(QUICK) as runner:
        m = runner.measure(spec, "smoke")
    assert m.client.completed > 0
    assert m.client.errors == 0
    assert m.client.percentiles_us[50] <= m.client.percentiles_us[99]
    assert m.server.requests > 0
    assert m.server.compute_infer_us > 0
    assert m.server.avg_batch_size >= 1.0


def _identity_ready(client: Client) -> bool:
    return client.is_ready(IDENTITY_MODEL)


def _wait_unloaded(client: Client, timeout_s: float = 60.0) -> None:
    """Wait on the condition (an unload completes asynchronously), not on a sleep."""
    deadline = time.monotonic() + timeout_s
    while _identity_ready(client):
        assert time.monotonic() < deadline, f"{IDENTITY_MODEL} still ready after {timeout_s} s"
        time.sleep(0.05)


def _benchmark_on(server: TritonServer, backend_dir: Path, ending: type[Exception] | None) -> None:
    """What `make bench` does with a user's running server, ended normally, by Ctrl-C or an error."""
    with stack(server.http_url, server.grpc_url, backend_dir) as used:
        assert not used.started_here
        with Client(server.http_url, protocol="http") as client:
            assert _identity_ready(client)  # loaded for the benchmark
        if ending is not None:
            raise ending("stopped inside the benchmark")


@pytest.mark.parametrize("ending", [None, KeyboardInterrupt, RuntimeError])
def test_a_users_server_is_left_without_the_identity_model(
    server: TritonServer, client: Client, tmp_path: Path, ending: type[Exception] | None
) -> None:
    try:
        unload_identity(server.http_url)
        _wait_unloaded(client)
        if ending is None:
            _benchmark_on(server, tmp_path, ending)
        else:
            with pytest.raises(ending):
                _benchmark_on(server, tmp_path, ending)
        _wait_unloaded(client)
        assert client.is_ready("digits_classifier")  # the user's own models stay
    finally:
        ensure_identity(server.http_url)  # the other tests of this module use it


def _successes(client: Client, model: str) -> int:
    return ServerCounters.parse(client.inference_statistics(model), model).success_count


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_an_interrupted_bench_run_unloads_the_identity_model(
    server: TritonServer, client: Client, tmp_path: Path, stop: signal.Signals
) -> None:
    """`make bench` stopped mid-measurement (Ctrl-C, or kill/CI timeout) still unloads it."""
    command = [sys.executable, "-m", "mlapi_bench", "sweep", "--http-url", server.http_url]
    command += ["--grpc-url", server.grpc_url, "--models", "digits_classifier"]
    command += ["--protocols", "grpc", "--concurrency", "1", "--warmup-s", "0.2"]
    command += ["--window-s", "300", "--out", str(tmp_path)]
    try:
        unload_identity(server.http_url)
        _wait_unloaded(client)
        served_before = _successes(client, "digits_classifier")
        log = (tmp_path / "bench.log").open("wb")
        bench = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            # Measuring: the identity model is loaded and the sweep's load reaches the server.
            while not (
                _identity_ready(client) and _successes(client, "digits_classifier") > served_before
            ):
                assert bench.poll() is None, (tmp_path / "bench.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the sweep never started measuring"
                time.sleep(0.05)
            bench.send_signal(stop)
            status = bench.wait(timeout=120)
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()
            log.close()
        assert status != 0  # stopped, not finished
        _wait_unloaded(client)
        assert client.is_ready("digits_classifier")  # the user's own models stay
    finally:
        ensure_identity(server.http_url)


def test_an_identity_model_the_user_loaded_stays_loaded(
    server: TritonServer, client: Client, tmp_path: Path
) -> None:
    ensure_identity(server.http_url)
    with stack(server.http_url, server.grpc_url, tmp_path):
        pass
    assert _identity_ready(client)


def test_open_loop_sends_at_the_asked_rate(server: TritonServer) -> None:
    spec = LoadSpec(Endpoint("http", server.http_url), IDENTITY_MODEL, "request_rate", 40.0)
    with Runner(Phases(0.2, 1.0)) as runner:
        m = runner.measure(spec)
    assert m.client.sent == pytest.approx(40, abs=2)  # scheduled on a fixed grid
    assert m.client.errors == 0


def test_failed_requests_are_counted_by_kind_never_hidden(server: TritonServer) -> None:
    spec = LoadSpec(
        Endpoint("grpc", server.grpc_url), "digits_classifier", "concurrency", 2, version="99"
    )
    with Runner(QUICK) as runner:
        m = runner.measure(spec)
    assert m.client.completed > 0
    assert m.client.errors == m.client.completed
    assert m.client.throughput_per_s == 0
    assert all(kind.startswith("status ") for kind in m.client.error_kinds)


def test_sweep_cli_writes_csv_json_and_plots(server: TritonServer, tmp_path: Path) -> None:
    status = main(
        [
            "sweep",
            "--http-url",
            server.http_url,
            "--grpc-url",
            server.grpc_url,
            "--models",
            "digits",
            "--protocols",
            "grpc",
            "--concurrency",
            "2",
            "--warmup-s",
            "0.2",
            "--window-s",
            "0.5",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    (run_dir,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    with (run_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["digits", IDENTITY_MODEL]
    assert all(int(r["requests"]) > 0 and r["errors"] == "0" for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ratios"][0]["model"] == "digits"
    assert {x["model"] for x in summary["in_process"]} == {"digits"}
    for png in ("latency_vs_throughput.png", "p99_vs_concurrency.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"


def test_locust_bad_requests_get_4xx_and_the_server_stays_healthy(server: TritonServer) -> None:
    mix = default_mix(seed=1)
    seen = set()
    for _ in range(30):
        call = mix.bad_request()
        if call.name in seen:
            continue
        seen.add(call.name)
        request = urllib.request.Request(
            f"http://{server.http_url}{call.path}",
            data=json.dumps(call.body).encode(),
            headers={"Content-Type": "application/json", **access.http_headers(access.read_key())},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        caught.value.close()  # the error carries the open response
        assert call.verdict(caught.value.code) is None, f"{call.name}: {caught.value.code}"
    assert len(seen) == 3
    good = mix.digits_image()
    request = urllib.request.Request(
        f"http://{server.http_url}{good.path}",
        data=json.dumps(good.body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **access.http_headers(access.read_key())},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert good.verdict(reply.status) is None


def test_study_switches_config_and_restores_it(server: TritonServer, client: Client) -> None:
    with switching(server.http_url, "digits_classifier") as switcher:
        switcher.use(Variant(None))
        assert "dynamic_batching" not in client.model_config("digits_classifier")
        with pytest.raises(StudyError):
            switcher.use(Variant(100, preferred_batch_sizes=(1000,)))  # > max_batch_size
        # A refused reload leaves the previous config serving.
        assert client.is_ready("digits_classifier")
    restored = client.model_config("digits_classifier")
    shipped = config_dict(MODEL_REPOSITORY / "digits_classifier" / "config.pbtxt")
    delay = int(restored["dynamic_batching"].get("max_queue_delay_microseconds", 0))
    assert delay == int(shipped["dynamic_batching"].get("max_queue_delay_microseconds", 0))
    assert client.is_ready("digits_classifier", "1") and client.is_ready("digits_classifier", "2")


def test_locust_headless_run_reports_no_failures(server: TritonServer, tmp_path: Path) -> None:
    from mlapi_bench.locust_run import LocustSettings, problems, run_locust

    markdown, totals, status = run_locust(
        server.http_url, LocustSettings(users=2, spawn_rate=2, duration_s=3), tmp_path
    )
    assert totals.requests > 0, markdown
    assert totals.failures == 0, markdown
    assert status == 0
    assert problems(totals, status) == [], markdown
    assert (tmp_path / "locust_stats.csv").is_file()
