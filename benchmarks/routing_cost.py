"""Cost of the version router in `digits`: throughput and p50/p99 per traffic policy, one run.

    .venv/bin/python benchmarks/routing_cost.py [--concurrency 8] [--window-s 10]

Starts its own tritonserver (free ports), then for each policy measures a closed loop of
`--concurrency` gRPC clients (the mlapi_bench harness) sending one 32x32 held-out digit per request:

- fixed:    {"2": 100}                 every request to one version (the fixed-version path)
- weighted: {"1": 50, "2": 50}         a random draw per request; batches split by version
- sticky:   {"1": 50, "2": 50} + a routing_key per request (400 keys cycled)
- shadow:   {"2": 100}, shadow 1       a copy of all traffic to version 1, compared

Writes a JSON and a Markdown table to benchmarks/results/<date>/<time>/routing_cost.* and prints the
ratios against the fixed path. A benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlapi_bench.clients import Endpoint
from mlapi_bench.load import LoadSpec, drive, prime
from mlapi_bench.report import results_dir
from mlapi_bench.stats import window_stats
from mlapi_client import access
from mlapi_client.traffic import TrafficController
from mlapi_tools.local.triton_process import Ports, TritonServer

ROOT = Path(__file__).resolve().parents[1]
STICKY_KEYS = 400  # distinct routing keys cycled by the sticky run
POLICIES = {
    "fixed": ({"2": 100}, None, False),
    "weighted": ({"1": 50, "2": 50}, None, False),
    "sticky": ({"1": 50, "2": 50}, None, True),
    "shadow": ({"2": 100}, 1, False),
}


def _measure(url: str, concurrency: int, warmup_s: float, window_s: float, sticky: bool) -> dict:
    """The harness's closed loop on `digits` (32x32 held-out digits); stats of the window only."""
    spec = LoadSpec(
        Endpoint("grpc", url),
        "digits",
        "concurrency",
        concurrency,
        image_side=32,
        routing_keys=STICKY_KEYS if sticky else 0,
    )
    # Payloads built, connection open and model warm before the schedule is fixed: building the
    # digits payloads imports scikit-learn, seconds on a busy machine.
    asyncio.run(prime(spec))
    begin = time.monotonic() + warmup_s
    end = begin + window_s
    stats = window_stats(asyncio.run(drive(spec, time.monotonic(), end)), begin, end)
    return {
        "requests": stats.completed,
        "errors": stats.errors,
        "throughput_rps": stats.throughput_per_s,
        "p50_ms": stats.percentiles_us[50] / 1e3,
        "p99_ms": stats.percentiles_us[99] / 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--window-s", type=float, default=10.0)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"  # only the models under test
        repository.mkdir()
        for model in ("digits", "digits_classifier"):
            (repository / model).symlink_to(ROOT / "model_repository" / model)
        server = TritonServer(
            [repository],
            Path(tmp) / "backends",
            ports=Ports.free(),
            exit_timeout_s=3,
            access_key=access.ensure_key(),
        )
        with (Path(tmp) / "triton.log").open("wb") as log, server:
            server.start(log)
            server.wait_ready(120, models=("digits", "digits_classifier"))
            with TrafficController(server.http_url) as traffic:
                for name, (weights, shadow, sticky) in POLICIES.items():
                    traffic.set(weights, shadow)
                    print(
                        f"{name:9s} policy {weights} shadow={shadow} sticky={sticky} ...",
                        flush=True,
                    )
                    results[name] = _measure(
                        server.grpc_url, args.concurrency, args.warmup_s, args.window_s, sticky
                    )
    fixed = results["fixed"]
    lines = [
        "| policy | req/s | p50 ms | p99 ms | errors | throughput vs fixed | p50 vs fixed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | "
            f"{r['throughput_rps'] / fixed['throughput_rps']:.2f} | {r['p50_ms'] / fixed['p50_ms']:.2f} |"
        )
    table = "\n".join(lines)
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    out = results_dir(ROOT / "benchmarks" / "results")
    settings = {
        "concurrency": args.concurrency,
        "window_s": args.window_s,
        "warmup_s": args.warmup_s,
    }
    (out / "routing_cost.json").write_text(
        json.dumps({"revision": revision, "settings": settings, "results": results}, indent=2)
    )
    (out / "routing_cost.md").write_text(
        f"concurrency {args.concurrency}, gRPC, 32x32 held-out digits, revision {revision}\n\n{table}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
