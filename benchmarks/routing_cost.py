"""Cost of the version router in `digits`: throughput and p50/p99 per traffic policy, one run.

    .venv/bin/python benchmarks/routing_cost.py [--concurrency 8] [--window-s 10]

Starts its own tritonserver (free ports), then for each policy measures a closed loop of
`--concurrency` gRPC clients sending one 28x28 digit per request:

- fixed:    {"2": 100}                 every request to one version (the fixed-version path)
- weighted: {"1": 50, "2": 50}         a random draw per request; batches split by version
- sticky:   {"1": 50, "2": 50} + routing_key per request
- shadow:   {"2": 100}, shadow 1       a copy of all traffic to version 1, compared

Writes a JSON and a Markdown table to benchmarks/results/<date>/routing_cost.* and prints the
ratios against the fixed path. A benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput

from mlapi_backend.local.triton_process import Ports, TritonServer
from mlapi_client.traffic import TrafficController

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {
    "fixed": ({"2": 100}, None, False),
    "weighted": ({"1": 50, "2": 50}, None, False),
    "sticky": ({"1": 50, "2": 50}, None, True),
    "shadow": ({"2": 100}, 1, False),
}


def _image() -> np.ndarray:
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 4:24, 12:16] = 255
    return image


async def _closed_loop(
    url: str, concurrency: int, warmup_s: float, window_s: float, sticky: bool
) -> dict:
    client = grpcaio.InferenceServerClient(url)
    tensor = InferInput("image", [1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(_image())
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    begin, end = start + warmup_s, start + warmup_s + window_s

    async def worker(worker_id: int) -> None:
        nonlocal errors
        sent = 0
        while (now := time.perf_counter()) < end:
            parameters = {"routing_key": f"user-{worker_id}-{sent % 50}"} if sticky else None
            try:
                await client.infer("digits", [tensor], parameters=parameters)
            except Exception:  # counted, never hidden
                errors += 1
                continue
            finally:
                sent += 1
            done = time.perf_counter()
            if now >= begin:
                latencies.append(done - now)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await client.close()
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / window_s,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
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
                    results[name] = asyncio.run(
                        _closed_loop(
                            server.grpc_url, args.concurrency, args.warmup_s, args.window_s, sticky
                        )
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
    out = ROOT / "benchmarks" / "results" / dt.date.today().isoformat()
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "concurrency": args.concurrency,
        "window_s": args.window_s,
        "warmup_s": args.warmup_s,
    }
    (out / "routing_cost.json").write_text(
        json.dumps({"revision": revision, "settings": settings, "results": results}, indent=2)
    )
    (out / "routing_cost.md").write_text(
        f"concurrency {args.concurrency}, gRPC, 28x28 digit, revision {revision}\n\n{table}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
