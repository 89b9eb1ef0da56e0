"""The client library's share of a gateway predict: ``AsyncClient.digits`` against a real Triton.

The gateway makes one such call per predict request, so the CPU this process spends per call
is what the client library costs the gateway. Each measurement runs in a fresh process (the
worker mode below) that warms up, then makes ``--calls`` sequential calls on one connection
(the gateway at 1 connection) and ``--calls`` more as 16 concurrent streams (at 16), and
reports its own CPU time (utime + stime) per call and the p50 latency. Triton's CPU is not
counted: it runs in its own process.

    python benchmarks/gateway/client_call.py [--rounds 5] [--calls 2000] [--compare-tree DIR]
                                             [--protocol http] [--profile FILE]

``--compare-tree DIR`` (e.g. ``git archive`` of another revision, extracted) measures that
tree's client in the same interleaved rounds: before/after ratios from one run. ``--profile``
writes a cProfile of one worker of this tree instead. Uses the Triton on TRITON_HTTP_PORT /
TRITON_GRPC_PORT when it serves digits, else starts one on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONCURRENT = 16  # streams of the concurrent phase: the wrk runs' 16 connections


async def _phase(client: Any, image: Any, calls: int, streams: int) -> dict[str, float]:
    """``calls`` digits calls over ``streams`` concurrent loops: CPU per call and p50."""
    latencies: list[float] = []

    async def loop(count: int) -> None:
        for _ in range(count):
            start = time.perf_counter()
            await client.digits(image, retry=False)
            latencies.append(time.perf_counter() - start)

    before = os.times()
    await asyncio.gather(*(loop(calls // streams) for _ in range(streams)))
    after = os.times()
    user_s, system_s = after.user - before.user, after.system - before.system
    return {
        "cpu_us_per_call": (user_s + system_s) * 1e6 / len(latencies),
        "user_us_per_call": user_s * 1e6 / len(latencies),
        "p50_us": statistics.median(latencies) * 1e6,
    }


async def _worker(url: str, protocol: str, calls: int, profile: Path | None) -> dict[str, Any]:
    from mlapi_client import AsyncClient
    from mlapi_tools.build.digits_data import load_split

    image = load_split().test_images[0]
    async with AsyncClient(url, protocol=protocol) as client:  # type: ignore[arg-type]
        await _phase(client, image, 200, CONCURRENT)  # connections opened, caches warm
        if profile is not None:
            import cProfile

            with cProfile.Profile() as profiler:
                await _phase(client, image, calls, 1)
            profiler.dump_stats(profile)
        return {
            "c1": await _phase(client, image, calls, 1),
            f"c{CONCURRENT}": await _phase(client, image, calls, CONCURRENT),
        }


def _measure(tree: Path | None, url: str, protocol: str, calls: int) -> dict[str, Any]:
    """Run one worker process on ``tree``'s client (None: this checkout's)."""
    env = dict(os.environ)
    if tree is not None:  # ahead of the editable install's paths
        env["PYTHONPATH"] = os.pathsep.join(str(tree / p) for p in ("clients", "tools"))
    command = [sys.executable, __file__, "--worker", "--url", url, "--protocol", protocol]
    command += ["--calls", str(calls)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _triton_url(protocol: str, workdir: Path) -> tuple[str, Any]:
    """The URL of a Triton that serves digits, and the server this started (or None)."""
    from mlapi_client import Client, MlapiError, access
    from mlapi_tools.local.triton_process import Ports, TritonServer

    ports = Ports.from_env()
    with Client(f"127.0.0.1:{ports.http}", protocol="http", timeout_s=2.0) as probe:
        try:
            serving = probe.is_ready("digits", retry=False)
        except MlapiError:
            serving = False
    triton = None
    if not serving:
        key = access.ensure_key()
        triton = TritonServer(
            [ROOT / "model_repository"], workdir / "backends", ports=Ports.free(), access_key=key
        )
        triton.start((workdir / "triton.log").open("wb"))
        triton.wait_ready(timeout_s=180, models=("digits",))
        os.environ[access.KEY_ENV] = key
        ports = triton.ports
    port = ports.http if protocol == "http" else ports.grpc
    return f"127.0.0.1:{port}", triton


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--compare-tree", type=Path)
    parser.add_argument("--profile", type=Path, help="write a cProfile of the calls at 1")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import uvloop  # the gateway's event loop (mlapi_gateway.__main__)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(_worker(args.url, args.protocol, args.calls, args.profile))
        print(json.dumps(result))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="mlapi-bench-client-"))
    url, triton = _triton_url(args.protocol, workdir)
    try:
        if args.profile is not None:
            command = [sys.executable, __file__, "--worker", "--url", url]
            command += ["--protocol", args.protocol, "--calls", str(args.calls)]
            subprocess.run([*command, "--profile", str(args.profile)], check=True)
            return 0
        trees: dict[str, Path | None] = {"this": None}
        if args.compare_tree is not None:
            trees[f"@{args.compare_tree.name}"] = args.compare_tree.resolve()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
        for round_number in range(args.rounds):
            for name, tree in trees.items():  # interleaved: drift hits every tree alike
                run = _measure(tree, url, args.protocol, args.calls)
                runs[name].append(run)
                print(f"round {round_number + 1} {name}: {json.dumps(run)}", flush=True)
    finally:
        if triton is not None:
            triton.stop()
    summary = {
        name: {
            level: {
                key: round(statistics.median(r[level][key] for r in tree_runs), 1)
                for key in ("cpu_us_per_call", "user_us_per_call", "p50_us")
            }
            for level in tree_runs[0]
        }
        for name, tree_runs in runs.items()
    }
    print(f"medians: {json.dumps(summary)}")
    print(f"load average: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
