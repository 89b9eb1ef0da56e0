"""A real Prometheus evaluates the chart's autoscaling rule against a real tritonserver and a
real gateway: near zero at idle, well above the HPA's target under a load that saturates Triton.

The scrape labels each target with namespace and pod, as the chart's ServiceMonitor does, so the
rules run unchanged. The chart's `helm test` script makes its prediction through this gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlapi_client import AsyncClient
from mlapi_client.errors import MlapiError
from mlapi_tools.local.prometheus import BINARY, Prometheus, wait_for
from tests.conftest import MODEL_REPOSITORY, PUBLIC_MODELS, own_triton
from tests.integration.gateway.harness import Gateway, create_key

from .chart_render import CHART, RULES_FILE

pytestmark = [
    pytest.mark.skipif(
        BINARY is None,
        reason="prometheus missing: `make system-deps` installs Debian's prometheus package",
    ),
    pytest.mark.timeout(150),
]

RATIO = 'mlapi:triton_queue_compute_ratio:rate1m{namespace="ml",pod="triton-0"}'
PER_MODEL = "rate(nv_inference_queue_duration_us[1m]) / clamp_min(rate(nv_inference_compute_infer_duration_us[1m]), 1)"
IN_FLIGHT = 'mlapi:gateway_in_flight:rate1m{namespace="ml",pod="gateway-0"}'
PREDICTIONS = 'sum(mlapi_gateway_requests_total{route="/v1/models/{model}/predict"})'
TARGET = float(
    yaml.safe_load((CHART / "values.yaml").read_text())["autoscaling"]["triton"][
        "targetQueueComputeRatio"
    ]
)
# Saturating `digits` itself gave 0.6-0.84 in three runs on 2 shared CPUs: its queue policy
# (at most 128 waiting for 2 instances of batch 64) caps a request's wait at about one batch,
# and how full the queue stays depends on how fast this machine's load generator resubmits.
# Too close to any sensible target to prove anything, so the load goes to a purpose-built
# model, the real digits_classifier ONNX file with one instance and no batching: requests run
# one at a time, so with PROBE_CONCURRENCY outstanding each waits for the others.
PROBE = "saturation_probe"
PROBE_CONCURRENCY = 16
LOADED_FACTOR = 4.0  # "clearly above": 4 x the target
LOAD_BOUND_S = 45.0
IMAGE = np.zeros((1, 8, 8), dtype=np.uint8)
IMAGE[0, 1:7, 3:5] = 255  # a "1"
PIXELS = np.zeros((1, 64), dtype=np.float32)
PROBE_CONFIG = """
name: "saturation_probe"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "pixels", data_type: TYPE_FP32, dims: [ 64 ] } ]
output [ { name: "probabilities", data_type: TYPE_FP32, dims: [ 10 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def _probe_repository(workdir: Path) -> Path:
    repository = workdir / "probe_repository"
    (repository / PROBE / "1").mkdir(parents=True)
    (repository / PROBE / "config.pbtxt").write_text(PROBE_CONFIG)
    onnx = MODEL_REPOSITORY / "digits_classifier" / "2" / "model.onnx"
    (repository / PROBE / "1" / "model.onnx").write_bytes(onnx.read_bytes())
    return repository


@dataclass
class Stack:
    triton_grpc: str
    gateway: Gateway
    api_key_file: Path
    prometheus: Prometheus
    idle_ratio: float
    triton_metrics_port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, triton_key: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("monitoring")
    repositories = [MODEL_REPOSITORY, _probe_repository(workdir)]
    with own_triton(workdir, repositories, models=(*PUBLIC_MODELS, PROBE)) as triton:
        keys_file = workdir / "keys.json"
        api_key = create_key(keys_file, "predict", plan="unlimited")
        api_key_file = workdir / "api.key"
        api_key_file.write_text(api_key + "\n")
        gateway = Gateway(
            env={
                "MLAPI_GATEWAY_TRITON_GRPC_URL": triton.grpc_url,
                "MLAPI_GATEWAY_TRITON_HTTP_URL": triton.http_url,
                "MLAPI_GATEWAY_KEYS_FILE": str(keys_file),
                "MLAPI_GATEWAY_JOBS_DB": str(workdir / "jobs.sqlite3"),
                "MLAPI_GATEWAY_ACCESS_LOG": "false",
            },
            log_path=workdir / "gateway.log",
        ).start()
        prometheus = Prometheus(
            workdir,
            RULES_FILE,
            {
                "triton": (
                    triton.metrics_url.split("/")[2],
                    "/metrics",
                    {"namespace": "ml", "pod": "triton-0", "container": "tritonserver"},
                ),
                "gateway": (
                    gateway.url.split("/")[2],
                    "/metrics",
                    {"namespace": "ml", "pod": "gateway-0", "container": "gateway"},
                ),
            },
        )
        try:
            prometheus.start()
            wait_for(prometheus.targets_up, 30, "both targets scraped")
            wait_for(
                lambda: all(s == "ok" for s in prometheus.rule_health().values()),
                30,
                "every rule evaluated",
            )
            idle = wait_for(
                lambda: (v := _value(prometheus, RATIO)) is not None and (v,),
                30,
                "the ratio recorded before any inference",
            )[0]
            yield Stack(
                triton.grpc_url, gateway, api_key_file, prometheus, idle, triton.ports.metrics
            )
        finally:
            prometheus.stop()
            gateway.stop()


def _helm_test(stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHART / "files" / "helm-test-predict.py")],
        env={
            **os.environ,
            "GATEWAY_URL": stack.gateway.url,
            "MLAPI_API_KEY_FILE": str(stack.api_key_file),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_helm_test_script_predicts_through_a_real_gateway(stack: Stack) -> None:
    done = _helm_test(stack)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("predicted 1 "), done.stdout
    stack.api_key_file.with_name("wrong.key").write_text("mlapi_0000_wrong\n")
    refused = subprocess.run(
        [sys.executable, str(CHART / "files" / "helm-test-predict.py")],
        env={
            **os.environ,
            "GATEWAY_URL": stack.gateway.url,
            "MLAPI_API_KEY_FILE": str(stack.api_key_file.with_name("wrong.key")),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-500:]


def _value(prometheus: Prometheus, expr: str) -> float | None:
    values = list(prometheus.query(expr).values())
    return values[0] if values else None


class Load:
    """``concurrency`` requests to ``model`` in flight over gRPC until stopped (one per call
    of ``inputs``; answers and sheds are both counted)."""

    def __init__(self, url: str, work: dict[str, tuple[dict[str, np.ndarray], int]]) -> None:
        self.url = f"grpc://{url}"
        self.work = work
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _worker(self, client: AsyncClient, model: str, inputs: dict[str, np.ndarray]) -> None:
        while not self._stop.is_set():
            try:
                await client.infer(model, inputs, retry=False, timeout_s=30)
                self.outcomes[f"{model} ok"] += 1
            except MlapiError as exc:  # shed by a queue policy: still load
                self.outcomes[f"{model} {type(exc).__name__}"] += 1

    async def _run(self) -> None:
        client = AsyncClient(self.url)
        try:
            await asyncio.gather(
                *(
                    self._worker(client, model, inputs)
                    for model, (inputs, concurrency) in self.work.items()
                    for _ in range(concurrency)
                )
            )
        finally:
            await client.close()

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the load did not stop"


def test_autoscaling_ratio_is_near_zero_at_idle_and_above_target_under_load(
    stack: Stack, report_figure
) -> None:
    prometheus = stack.prometheus
    # Idle: measured by the fixture before any inference, so both rates are 0 and the
    # clamped ratio is 0 (not NaN, which the HPA would ignore).
    idle = stack.idle_ratio
    assert idle == 0.0, f"idle ratio {idle} (target {TARGET})"

    # Light traffic through the gateway (one request at a time: nothing queues), in two rounds
    # that Prometheus scrapes separately: rate() ignores the first sample of a new series, so
    # predictions that all land in one scrape could leave the in-flight rate at 0.
    scraped = _value(prometheus, PREDICTIONS) or 0
    for _ in range(2):
        for _ in range(5):
            assert _helm_test(stack).returncode == 0
        wanted = scraped + 5
        scraped = wait_for(
            lambda: (v := _value(prometheus, PREDICTIONS) or 0) >= wanted and v,  # noqa: B023
            30,
            f"{wanted:.0f} gateway predictions scraped",
        )
    in_flight = wait_for(
        lambda: (_value(prometheus, IN_FLIGHT) or 0) > 0 and _value(prometheus, IN_FLIGHT),
        30,
        "the gateway's in-flight rate above 0",
    )
    # Light traffic reads well below saturation. It is not 0: each request waits its model's
    # queue delay, and on a busy host the wait for a CPU counts as queue time too: 0.06-0.17 in
    # most runs, 0.31 once on a clean clone beside other work, against the chart's target of
    # 0.3. So the bound is half the "clearly above" threshold the saturated server must pass
    # below (LOADED_FACTOR x target): a rule that reads high without load still fails, and the
    # target itself stays a tuning value (docs/deploy.md), not something this host can prove.
    light = _value(prometheus, RATIO)
    light_bound = LOADED_FACTOR * TARGET / 2
    assert light is not None and light < light_bound, (
        f"light-traffic ratio {light} (bound {light_bound}, target {TARGET})"
    )

    started = time.monotonic()
    peak = 0.0

    def above_target() -> float | None:
        nonlocal peak
        value = _value(prometheus, RATIO) or 0.0
        peak = max(peak, value)
        return value if value > LOADED_FACTOR * TARGET else None

    work = {PROBE: ({"pixels": PIXELS}, PROBE_CONCURRENCY)}
    with Load(stack.triton_grpc, work) as load:
        try:
            loaded = wait_for(
                above_target, LOAD_BOUND_S, f"ratio above {LOADED_FACTOR} x the target", 0.5
            )
        except TimeoutError:
            pytest.fail(
                f"ratio peaked at {peak:.3f} under load (target {TARGET}); outcomes {dict(load.outcomes)}"
            )
        per_model = prometheus.query(PER_MODEL)
        last = _value(prometheus, RATIO) or 0.0
    models = {
        next(p.split("=")[1] for p in labels.split(",") if p.startswith("model=")): round(value, 3)
        for labels, value in per_model.items()
        if "version=" in labels
    }
    report_figure(
        "autoscaling ratio (queue/compute, rate 1m) by a real Prometheus",
        f"idle {idle:.4f}, light traffic {light:.4f}, under load {loaded:.2f} after {time.monotonic() - started:.0f} s, "
        f"then {last:.2f} "
        f"(HPA target {TARGET}); per model then {models}; requests {dict(load.outcomes)}; "
        f"gateway in flight after sequential predictions {in_flight:.3g}",
    )
    assert load.outcomes[f"{PROBE} ok"] > 0


def test_every_dashboard_query_runs_on_the_real_stack(stack: Stack, report_figure) -> None:
    """Each expression of the Grafana dashboard is valid PromQL and, unless it charts a rare
    event (heals, errors), returns data once the stack has served predictions."""
    import httpx

    from mlapi_tools.dashboard import panels

    async def streams() -> None:
        async with AsyncClient(f"grpc://{stack.triton_grpc}") as client:
            prompt = {"text_input": np.array([b"The server"], dtype=object),
                      "max_tokens": np.array([4], dtype=np.int32)}  # fmt: skip
            async for _ in client.stream("text_generator", prompt, timeout_s=30):
                pass

    async def digits_windows() -> None:
        # 640 held-out digits straight to Triton: a digits instance's drift window holds the
        # 200 images a drift test needs, so the p-value panel has data too.
        from mlapi_tools.build.digits_data import load_split

        images = load_split().test_images
        async with AsyncClient(f"grpc://{stack.triton_grpc}") as client:
            for start in range(0, 640, 64):
                batch = images[np.arange(start, start + 64) % len(images)]
                await client.infer("digits", {"image": batch}, timeout_s=30)

    async def nudge_digits() -> None:
        # A refused request: each execute sends what the statistics thread has queued.
        async with AsyncClient(f"grpc://{stack.triton_grpc}") as client:
            for _ in range(4):  # so that both digits instances execute
                with contextlib.suppress(MlapiError):
                    await client.infer("digits", {"image": np.zeros((1, 4, 4), np.uint8)})

    asyncio.run(digits_windows())
    for _ in range(2):  # two scrapes apart, so that rate() has two samples of each series
        assert _helm_test(stack).returncode == 0
        asyncio.run(streams())
        time.sleep(1.5)
        asyncio.run(nudge_digits())
    headers = {"Authorization": f"Bearer {stack.api_key_file.read_text().strip()}"}
    refused = httpx.post(
        f"{stack.gateway.url}/v1/models/digits/predict", json={"pixels": "x"}, headers=headers
    )
    assert refused.status_code == 400
    queries = [
        (panel, expr.replace("$__rate_interval", "1m"))
        for panel in panels()
        for expr, _legend in panel.queries
    ]
    empty = []
    for panel, expr in queries:
        answer = prometheus_answer(stack.prometheus, expr)  # a parse error fails here
        if not answer and not panel.on_event:

            def answered(expr: str = expr) -> object:
                # The statistics reach Triton's metrics at a digits execute: keep nudging.
                asyncio.run(nudge_digits())
                return prometheus_answer(stack.prometheus, expr)

            try:
                wait_for(answered, 45, expr, interval_s=1.0)
            except TimeoutError:
                empty.append(f"{panel.title}: {expr}")
    report_figure(
        "dashboard queries run on a real Prometheus", f"{len(queries)} in {len(panels())} panels"
    )
    assert not empty, "no data for:\n" + "\n".join(empty)
    validation = 'mlapi_gateway_errors_total{type="validation",status_class="4xx"}'
    wait_for(lambda: stack.prometheus.query(validation), 30, "the 400 counted as validation, 4xx")


def prometheus_answer(prometheus: Prometheus, expr: str) -> dict[str, float]:
    """The series ``expr`` returns now, NaN values (0/0 quantiles of idle windows) left out."""
    return {k: v for k, v in prometheus.query(expr).items() if v == v}


def test_make_monitor_runs_prometheus_with_the_rules_beside_a_local_stack(
    stack: Stack, tmp_path: Path
) -> None:
    from mlapi_tools.local.prometheus import free_port

    port = free_port()
    gateway_port = stack.gateway.url.rsplit(":", 1)[1]
    command = [sys.executable, "-m", "mlapi_tools.local.monitor", "--port", str(port),
               "--triton-metrics-port", str(stack.triton_metrics_port), "--gateway-port",
               gateway_port, "--data-dir", str(tmp_path), "--scrape-interval-s", "1"]  # fmt: skip
    monitor = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert monitor.stdout is not None
        line = monitor.stdout.readline()
        assert line.startswith(f"Prometheus: http://127.0.0.1:{port}"), line
        local = Prometheus.attach(port)
        wait_for(local.targets_up, 30, "triton and gateway scraped by make monitor")
        rules = wait_for(local.rule_health, 30, "the chart's rules loaded")
        assert "mlapi:triton_queue_compute_ratio:rate1m" in rules and "MlapiTritonDown" in rules
        up = local.query('up{namespace="local"}')
        assert len(up) == 2 and set(up.values()) == {1.0}, up
    finally:
        monitor.send_signal(signal.SIGINT)
        code = monitor.wait(timeout=30)
        if monitor.stdout is not None:
            monitor.stdout.close()
    assert code == 0
