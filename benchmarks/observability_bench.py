"""What digits' statistics and cost estimates cost: served images/s, latency, server CPU, in one run.

    .venv/bin/python benchmarks/observability_bench.py [--window-s 5] [--repeats 3] [--concurrency 8]

Starts its own tritonserver (free ports) with the shipped digits_classifier and two copies of
digits: ``digits`` as shipped (parameter ``observability`` on: the statistics thread, drift
windows, prediction metrics and the cost in every answer) and ``digits_off`` (the parameter
"off"). Per repeat, a window of one-image gRPC requests at ``--concurrency`` goes to each,
alternated (on, off, on, off, ...), so that the load of other processes falls on both alike;
the server's CPU (its whole process tree, from /proc) is read around each window. Also times
the gateway's cost hook (mlapi_gateway.metrics.count_cost) on a digits answer, in process.

Writes benchmarks/results/<date>/<time>/observability_bench.{json,md}. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from mlapi_backend.cost import tree_usage
from mlapi_bench.report import results_dir
from mlapi_bench.threaded import run_threads
from mlapi_client import access
from mlapi_gateway.metrics import count_cost
from mlapi_tools.build.digits_data import load_split
from mlapi_tools.local.triton_process import Ports, TritonServer

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"on": "digits", "off": "digits_off"}


def _repository(workdir: Path) -> Path:
    """A repository with the classifier and digits twice: as shipped, and with the hooks off."""
    repository = workdir / "repository"
    repository.mkdir()
    (repository / "digits_classifier").symlink_to(ROOT / "model_repository" / "digits_classifier")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "model_repository" / "digits", repository / "digits", ignore=ignore)
    off = repository / "digits_off"
    shutil.copytree(ROOT / "model_repository" / "digits", off, ignore=ignore)
    config = (off / "config.pbtxt").read_text()
    assert config.count('name: "digits"') == 1 and config.count("parameters [") == 1
    config = config.replace('name: "digits"', 'name: "digits_off"').replace(
        "parameters [",
        'parameters [\n  { key: "observability", value: { string_value: "off" } },',
    )
    (off / "config.pbtxt").write_text(config)
    return repository


def _window(
    url: str, model: str, images: np.ndarray, concurrency: int, window_s: float, pid: int
) -> dict[str, float]:
    lock, cursor, latencies, failed = threading.Lock(), [0], [], [0]
    end = time.monotonic() + window_s

    def worker() -> None:
        client = access.with_key(grpcclient.InferenceServerClient(url))
        tensor = grpcclient.InferInput("image", [1, 8, 8], "UINT8")
        while time.monotonic() < end:
            with lock:
                cursor[0] += 1
                image = images[cursor[0] % len(images)]
            tensor.set_data_from_numpy(np.ascontiguousarray(image[None]))
            start = time.perf_counter()
            try:
                client.infer(model, [tensor])
            except Exception:  # shed or failed: counted, not an image
                with lock:
                    failed[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
        client.close()

    cpu_before = tree_usage(pid)[0]
    elapsed = run_threads(worker, concurrency)
    cpu = tree_usage(pid)[0] - cpu_before
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return {
        "images_per_s": len(latencies) / elapsed,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "server_cpu_ms_per_image": cpu / max(len(latencies), 1) * 1e3,
        "failed": failed[0],
    }


def _gateway_hook_us(calls: int = 200_000) -> float:
    """Microseconds per count_cost call on a digits answer (the gateway's cost hook)."""
    answer = {"metadata": {"cost": {"usd": 1.2e-8, "cpu_s": 1e-3, "gpu_s": 0.0}}}
    started = time.perf_counter()
    for _ in range(calls):
        count_cost(answer, "digits", "2", "3fa2c1d4e5b6")
    return (time.perf_counter() - started) / calls * 1e6


def measure(triton: TritonServer, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate windows of each variant; return every window and the medians' ratios."""
    assert triton.pid is not None
    images = load_split().test_images
    windows: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for model in VARIANTS.values():  # warm-up: the meters' first rate, the batcher
        _window(triton.grpc_url, model, images, args.concurrency, 2.0, triton.pid)
    for _ in range(args.repeats):
        for name, model in VARIANTS.items():
            row = _window(
                triton.grpc_url, model, images, args.concurrency, args.window_s, triton.pid
            )
            windows[name].append(row)
    median = {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for name, rows in windows.items()
    }
    # Each round's on window against the off window right after it, then the median: the
    # load of other processes drifts between rounds more than between neighbours.
    rounds = list(zip(windows["on"], windows["off"], strict=True))
    return {
        "windows": windows,
        "median": median,
        "throughput_on_over_off": statistics.median(
            on["images_per_s"] / off["images_per_s"] for on, off in rounds
        ),
        "p50_on_minus_off_ms": statistics.median(
            on["p50_ms"] - off["p50_ms"] for on, off in rounds
        ),
        "cpu_per_image_on_over_off": statistics.median(
            on["server_cpu_ms_per_image"] / off["server_cpu_ms_per_image"] for on, off in rounds
        ),
        "gateway_cost_hook_us": _gateway_hook_us(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        workdir = Path(name)
        triton = TritonServer(
            [_repository(workdir)],
            backend_dir=workdir / "backends",
            ports=Ports.free(),
            exit_timeout_s=5,
            access_key=access.ensure_key(),
        )
        with (workdir / "tritonserver.log").open("wb") as log, triton:
            triton.start(log)
            triton.wait_ready(timeout_s=180, models=list(VARIANTS.values()))
            result = measure(triton, args)
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    summary = {"git_revision": revision, "settings": {k: str(v) for k, v in vars(args).items()},
               "cpus": os.cpu_count(), "load_average": os.getloadavg(), "result": result}  # fmt: skip
    out = results_dir(args.output)
    (out / "observability_bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "| observability | images/s | p50 ms | p99 ms | server CPU ms/image |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["median"].items():
        lines.append(
            f"| {name} | {row['images_per_s']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {row['server_cpu_ms_per_image']:.3f} |"
        )
    lines += [
        "",
        f"on/off: throughput {result['throughput_on_over_off']:.3f}, "
        f"p50 {result['p50_on_minus_off_ms']:+.3f} ms, "
        f"server CPU per image {result['cpu_per_image_on_over_off']:.3f}; "
        f"gateway cost hook {result['gateway_cost_hook_us']:.2f} us a request "
        f"(medians over {args.repeats} rounds of alternated {args.window_s:g} s windows, "
        f"concurrency {args.concurrency}, load average {os.getloadavg()[0]:.1f})",
    ]
    (out / "observability_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
