"""Cost per request through a real server, reconciled with the CPU its processes really used.

The server's prices make one CPU-second cost 1 USD (and memory and GPU free), so the sum of the
costs the responses carry must match the CPU seconds of the tritonserver process tree (/proc)
over the same bounded load run.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from mlapi_backend.cost import PRICE_ENV, tree_usage
from mlapi_client import access
from mlapi_tools.build.digits_data import DigitsSplit
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import MODEL_REPOSITORY, own_triton

# The meters re-measure the server's CPU per compute second every second, over 5 s at least.
WARM_UP_S = 7.0
LOAD_REQUESTS = 3000
CONCURRENCY = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    workdir = tmp_path_factory.mktemp("cost")
    repo = workdir / "repository"
    for name in ("digits", "digits_classifier"):
        shutil.copytree(
            MODEL_REPOSITORY / name, repo / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PRICE_ENV["cpu_core_hour_usd"], "3600")
        patch.setenv(PRICE_ENV["gpu_hour_usd"], "0")
        patch.setenv(PRICE_ENV["memory_gb_hour_usd"], "0")
        with own_triton(workdir, [repo], models=["digits"]) as started:
            yield started


def _costs(result) -> list[dict]:
    return [json.loads(row[0])["cost"] for row in result.as_numpy("metadata")]


def _run(client, images: np.ndarray, count: int, rng: np.random.Generator) -> float:
    picks = rng.integers(0, len(images), (count, 2))

    def one(pick: np.ndarray) -> float:
        tensor = grpcclient.InferInput("image", [2, 8, 8], "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(images[pick]))
        return sum(c["usd"] for c in _costs(client.infer("digits", [tensor])))

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return float(sum(pool.map(one, picks)))


def _counter(server: TritonServer, name: str) -> float:
    text = httpx.get(server.metrics_url).text
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    )


def test_the_costs_of_a_load_run_add_up_to_the_cpu_the_server_used(
    server: TritonServer, split: DigitsSplit, report_figure
) -> None:
    assert server.pid is not None
    client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url))
    rng = np.random.default_rng(5)
    images = split.test_images
    warm_until = time.monotonic() + WARM_UP_S
    while time.monotonic() < warm_until:  # the meters measure the server's rate
        _run(client, images, 100, rng)
    cpu_before, _ = tree_usage(server.pid)
    counted_before = _counter(server, "mlapi_cost_usd_total")
    started = time.monotonic()
    estimated = _run(client, images, LOAD_REQUESTS, rng)
    elapsed = time.monotonic() - started
    cpu_used = tree_usage(server.pid)[0] - cpu_before
    ratio = estimated / cpu_used
    report_figure(
        "cost vs /proc CPU of the server",
        f"{estimated:.3f} CPU-s estimated / {cpu_used:.3f} CPU-s used = {ratio:.3f} "
        f"({LOAD_REQUESTS} requests of 2 images, {CONCURRENCY} in flight, {elapsed:.1f} s)",
    )
    assert abs(ratio - 1) <= 0.15
    deadline = time.monotonic() + 30
    too_small = grpcclient.InferInput("image", [1, 4, 4], "UINT8")
    too_small.set_data_from_numpy(np.zeros((1, 4, 4), dtype=np.uint8))
    while _counter(server, "mlapi_cost_usd_total") - counted_before < estimated * 0.999:
        assert time.monotonic() < deadline, "the cost counter never caught up"
        time.sleep(0.2)
        # A refused request costs nothing; its execute sends the counts the statistics queued.
        with pytest.raises(Exception, match="image"):
            client.infer("digits", [too_small])
    client.close()


def test_every_response_carries_its_cost(server: TritonServer, split: DigitsSplit) -> None:
    client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url))
    tensor = grpcclient.InferInput("image", [3, 8, 8], "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(split.test_images[:3]))
    costs = _costs(client.infer("digits", [tensor]))
    client.close()
    assert len(costs) == 3
    for cost in costs:
        assert cost["usd"] > 0 and cost["cpu_s"] > 0 and cost["compute_s"] > 0
        # 1 USD per CPU-second here: the cost is the CPU it stands for.
        assert cost["usd"] == pytest.approx(cost["cpu_s"], rel=1e-5)
