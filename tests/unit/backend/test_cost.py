"""The cost model: prices from the environment, the formula, /proc readings, the meter's rate."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mlapi_backend.cost import (
    PRICE_ENV,
    CostMeter,
    Prices,
    price_results,
    process_cpu_s,
    tree_usage,
)


def test_prices_come_from_the_environment_and_bad_ones_are_refused() -> None:
    assert Prices.from_env({}) == Prices()
    prices = Prices.from_env({PRICE_ENV["cpu_core_hour_usd"]: "0.1", PRICE_ENV["gpu_hour_usd"]: ""})
    assert prices.cpu_core_hour_usd == 0.1 and prices.gpu_hour_usd == Prices().gpu_hour_usd
    for bad in ("abc", "-1", "inf", "nan"):
        with pytest.raises(ValueError, match=PRICE_ENV["memory_gb_hour_usd"]):
            Prices.from_env({PRICE_ENV["memory_gb_hour_usd"]: bad})


def test_the_formula_prices_cpu_gpu_and_memory_per_hour() -> None:
    prices = Prices(cpu_core_hour_usd=3.6, gpu_hour_usd=36.0, memory_gb_hour_usd=0.36)
    # 2 CPU-s, 0.5 GPU-s, 4 GB held for 10 s.
    assert prices.cost_usd(2.0, 0.5, 4.0, 10.0) == pytest.approx(0.002 + 0.005 + 0.004)


def test_proc_readings_follow_this_process() -> None:
    before = process_cpu_s(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert process_cpu_s(os.getpid()) - before >= 0.1
    cpu, memory = tree_usage(os.getpid())
    assert cpu >= process_cpu_s(os.getpid()) and memory > 0.001


def test_the_rate_spreads_the_servers_cpu_over_every_instances_compute(tmp_path: Path) -> None:
    server = os.getpid()  # this process stands in for the server tree
    prices = Prices(cpu_core_hour_usd=3600, memory_gb_hour_usd=0)  # CPU alone: usd == cpu_s
    a = CostMeter(prices, server, "a", ledger_dir=tmp_path)
    b = CostMeter(prices, server, "b", ledger_dir=tmp_path)
    assert a.record(0.5) == (0.5, pytest.approx(0.5))  # one core per compute second at first
    a.update(now=0)
    b.update(now=0)
    cpu_before = tree_usage(server)[0]
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    a.record(0.2)
    b.record(0.4)  # the two instances computed 0.6 s in all
    b.update(now=1)
    a.update(now=1)
    a.update(now=1.5)  # too soon: not measured again
    used = tree_usage(server)[0] - cpu_before
    assert a.cpu_per_compute_s == pytest.approx(used / 0.6, rel=0.2)
    cpu_s, usd = a.record(1.0)
    assert usd == pytest.approx(cpu_s) and cpu_s == pytest.approx(a.cpu_per_compute_s)


def test_results_carry_their_share_of_the_batch(tmp_path: Path) -> None:
    meter = CostMeter(Prices(cpu_core_hour_usd=3600), os.getpid(), "x", ledger_dir=tmp_path)

    def served(images: int) -> dict:
        rows = [[json.dumps({"model": "digits"}).encode()] for _ in range(images)]
        return {"metadata": np.array(rows, dtype=np.object_)}

    results = [served(3), ValueError("bad"), served(1)]
    price_results(meter, [object()] * 3, results, compute_s=0.4)
    costs = [json.loads(row[0])["cost"] for r in (results[0], results[2]) for row in r["metadata"]]
    assert len(costs) == 4
    assert sum(c["compute_s"] for c in costs) == pytest.approx(0.4)
    assert sum(c["usd"] for c in costs) == pytest.approx(0.4)  # 1 CPU-s per compute-s, 1 USD
    assert json.loads(results[0]["metadata"][0][0])["model"] == "digits"


def test_a_process_leaving_the_tree_restarts_the_rate_instead_of_going_negative(
    tmp_path: Path,
) -> None:
    meter = CostMeter(Prices(), os.getpid(), "x", ledger_dir=tmp_path)
    readings = iter([(10.0, 0.1), (12.0, 0.1), (4.0, 0.1), (5.0, 0.1)])
    import mlapi_backend.cost as cost

    original = cost.usage_of
    cost.usage_of = lambda pids: (*next(readings), True)
    try:
        for second in range(4):
            meter.record(1.0)
            meter.update(now=second)
            assert meter.cpu_per_compute_s >= 0
    finally:
        cost.usage_of = original
    assert meter.cpu_per_compute_s == pytest.approx(1.0)  # (5 - 4) CPU-s over 1 compute-s


def test_gpu_time_is_priced_per_gpu_hour_and_is_zero_on_cpu_instances(tmp_path: Path) -> None:
    prices = Prices(cpu_core_hour_usd=0, gpu_hour_usd=7200, memory_gb_hour_usd=0)
    meter = CostMeter(prices, os.getpid(), "g", ledger_dir=tmp_path)
    # 0.25 GPU-s at 7200 USD per GPU-hour: 0.5 USD, whatever the CPU.
    assert meter.record(1.0, gpu_s=0.25)[1] == pytest.approx(0.5)
    assert meter.record(1.0)[1] == 0.0  # a CPU instance's request: no GPU time, no GPU cost

    def served() -> dict:
        return {"metadata": np.array([[b'{"model": "digits"}']] * 2, dtype=np.object_)}

    on_cpu, on_gpu = [served()], [served()]
    price_results(meter, [object()], on_cpu, compute_s=0.4)
    price_results(meter, [object()], on_gpu, compute_s=0.4, gpu_s=0.1)
    cpu_costs = [json.loads(row[0])["cost"] for row in on_cpu[0]["metadata"]]
    gpu_costs = [json.loads(row[0])["cost"] for row in on_gpu[0]["metadata"]]
    assert [c["gpu_s"] for c in cpu_costs] == [0, 0] and [c["usd"] for c in cpu_costs] == [0, 0]
    assert [c["gpu_s"] for c in gpu_costs] == [0.05, 0.05]
    assert sum(c["usd"] for c in gpu_costs) == pytest.approx(0.1 * 7200 / 3600)


def test_the_tree_is_walked_again_only_after_a_while_or_once_a_process_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlapi_backend.cost as cost

    walks: list[float] = []
    gone = [False]

    def walk(root: int) -> list[int]:
        walks.append(root)
        return [root]

    monkeypatch.setattr(cost, "tree_pids", walk)
    monkeypatch.setattr(cost, "usage_of", lambda pids: (1.0, 0.1, not gone[0]))
    meter = CostMeter(Prices(), os.getpid(), "x", ledger_dir=tmp_path)
    for second in range(int(cost.TREE_REFRESH_S)):  # one walk, then the known processes
        meter.update(now=float(second))
    assert len(walks) == 1
    meter.update(now=cost.TREE_REFRESH_S)  # refreshed after TREE_REFRESH_S
    assert len(walks) == 2
    gone[0] = True
    meter.update(now=cost.TREE_REFRESH_S + 1)  # a process vanished in this reading...
    gone[0] = False
    meter.update(now=cost.TREE_REFRESH_S + 2)  # ...so the next one walks the tree again
    assert len(walks) == 3
