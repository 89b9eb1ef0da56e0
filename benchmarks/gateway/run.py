"""Gateway overhead benchmark: wrk against the gateway (auth + validation + rate limiting on)
and against Triton's own HTTP endpoint, on the same digits image, in one run.

The direct-Triton target (``triton``) is the raw baseline: wrk posting KServe JSON straight to
Triton, no client library. The gateway reaches Triton through the project's client.

Figures: p50 latency at 1 connection (the gateway's added latency is the difference) and
throughput at 16 connections (the gateway's share of direct Triton's). Targets: at most
1 ms added to p50; at least 10% of direct throughput.

    python benchmarks/gateway/run.py [--duration-s 10] [--workers 2] [--protocols http,grpc]
                                     [--out build/bench]

``--protocols`` starts one gateway per protocol of its calls to Triton (settings'
triton_infer_protocol) and measures them in the same interleaved rounds.

Uses the Triton on TRITON_HTTP_PORT / TRITON_GRPC_PORT when it is ready, else starts one on
free ports; always starts its own gateway with a fresh key. Needs `wrk` (make system-deps).
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
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LUA = Path(__file__).with_name("post_json.lua")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _triton_serves_digits(http_port: int) -> bool:
    """Whether a Triton on ``http_port`` serves ``digits`` (asked through the project's client)."""
    from mlapi_client import Client, MlapiError

    with Client(f"127.0.0.1:{http_port}", protocol="http", timeout_s=2.0) as client:
        try:
            return client.is_ready("digits", retry=False)
        except MlapiError:
            return False


def _wrk(url: str, body_file: Path, bearer: str, connections: int, duration_s: int) -> dict:
    threads = min(connections, 2)
    from mlapi_client import access

    env = {
        **os.environ,
        "WRK_BODY_FILE": str(body_file),
        "WRK_BEARER": bearer,
        # Only the direct-Triton runs (no bearer) present Triton's key.
        "WRK_TRITON_KEY": "" if bearer else (access.read_key() or ""),
    }
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "-s", str(LUA), url]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRK_JSON "))
    stats = json.loads(line[len("WRK_JSON ") :])
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats["connections"] = connections
    if stats["errors_status"] or stats["errors_socket"]:
        raise RuntimeError(f"wrk saw errors against {url}: {stats}")
    return stats


def _median(runs: list[dict]) -> dict:
    """Per-figure medians over rounds."""
    keys = ("p50_us", "p90_us", "p99_us", "rps")
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {
        "connections": runs[0]["connections"]
    }


def _bodies(workdir: Path) -> tuple[Path, Path]:
    from mlapi_tools.build.digits_data import load_split

    image = load_split().test_images[0]
    gateway_body = workdir / "gateway.json"
    gateway_body.write_text(json.dumps({"pixels": image.tolist()}))
    triton_body = workdir / "triton.json"
    triton_body.write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, *image.shape],
                        "datatype": "UINT8",
                        "data": image.reshape(-1).tolist(),
                    }
                ]
            }
        )
    )
    return gateway_body, triton_body


def _start_gateway(
    workdir: Path, ports: Any, protocol: str, workers: int
) -> tuple[subprocess.Popen[bytes], int]:
    """A gateway whose unary calls to Triton use ``protocol``; returns it and its port."""
    from mlapi_tools.local.triton_process import Ports

    port = Ports.free().http
    env = {
        **os.environ,
        "MLAPI_GATEWAY_TRITON_GRPC_URL": f"127.0.0.1:{ports.grpc}",
        "MLAPI_GATEWAY_TRITON_HTTP_URL": f"127.0.0.1:{ports.http}",
        "MLAPI_GATEWAY_TRITON_INFER_PROTOCOL": protocol,
        "MLAPI_GATEWAY_KEYS_FILE": str(workdir / "keys.json"),
        "MLAPI_GATEWAY_JOBS_DB": str(workdir / f"jobs-{protocol}.sqlite3"),
        # A real bucket on every request, sized so the benchmark never hits it.
        "MLAPI_GATEWAY_PLANS": json.dumps(
            {
                "default": {"rate_per_s": 100, "burst": 200},
                "bench": {"rate_per_s": 1e6, "burst": 1e6},
            }
        ),
    }
    command = [sys.executable, "-m", "mlapi_gateway", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    log = workdir / f"gateway-{protocol}.log"
    gateway = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 60
    while not _ready(f"http://127.0.0.1:{port}/healthz"):
        if time.monotonic() > deadline or gateway.poll() is not None:
            gateway.kill()
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.2)
    return gateway, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of the gateway")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds; figures are their medians"
    )
    parser.add_argument(
        "--protocols",
        default="http",
        help="comma-separated protocols of the gateway's calls to Triton, one gateway each "
        "(http, grpc); the first is the headline",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench")
    args = parser.parse_args()
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not protocols or set(protocols) - {"http", "grpc"}:
        parser.error("--protocols takes http and/or grpc")
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `make system-deps` (Debian: apt-get install wrk)")
        return 2

    from mlapi_client import access
    from mlapi_gateway.keys import add_key, new_key
    from mlapi_tools.local.triton_process import Ports, TritonServer

    workdir = Path(tempfile.mkdtemp(prefix="mlapi-bench-gateway-"))
    triton: TritonServer | None = None
    gateways: list[subprocess.Popen[bytes]] = []
    ports = Ports.from_env()
    try:
        if not _triton_serves_digits(ports.http):
            triton = TritonServer(
                [ROOT / "model_repository"],
                workdir / "backends",
                ports=Ports.free(),
                access_key=access.ensure_key(),
            )
            triton.start((workdir / "triton.log").open("wb"))
            triton.wait_ready(timeout_s=180, models=("digits",))
            ports = triton.ports
        key, record = new_key(["predict"], plan="bench")
        add_key(workdir / "keys.json", record)
        gateway_body, triton_body = _bodies(workdir)
        targets = {
            "triton": (f"http://127.0.0.1:{ports.http}/v2/models/digits/infer", triton_body, "")
        }
        for protocol in protocols:
            gateway, port = _start_gateway(workdir, ports, protocol, args.workers)
            gateways.append(gateway)
            url = f"http://127.0.0.1:{port}/v1/models/digits/predict"
            targets[f"gateway-{protocol}"] = (url, gateway_body, key)
        rounds = _interleaved_rounds(targets, args.rounds, args.duration_s)
        results = {
            name: {level: _median(runs) for level, runs in levels.items()}
            for name, levels in rounds.items()
        }
    finally:
        for gateway in gateways:
            gateway.terminate()
            gateway.wait(timeout=30)
        if triton is not None:
            triton.stop()
    direct = results["triton"]
    by_protocol = {
        protocol: {
            "added_p50_ms": round(
                (results[f"gateway-{protocol}"]["c1"]["p50_us"] - direct["c1"]["p50_us"]) / 1000, 3
            ),
            "throughput_share": round(
                results[f"gateway-{protocol}"]["c16"]["rps"] / direct["c16"]["rps"], 4
            ),
        }
        for protocol in protocols
    }
    headline = by_protocol[protocols[0]]
    added_p50_ms, share = headline["added_p50_ms"], headline["throughput_share"]
    summary = {
        "git_revision": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "settings": {
            "duration_s": args.duration_s,
            "rounds": args.rounds,
            "gateway_workers": args.workers,
            "protocols": protocols,
            "cpus": os.cpu_count(),
        },
        "results": results,
        "rounds": rounds,
        "by_protocol": by_protocol,
        "gateway_added_p50_ms": added_p50_ms,
        "gateway_throughput_share": share,
        "targets_met": {
            "added_p50_le_1ms": added_p50_ms <= 1.0,
            "throughput_share_ge_10pct": share >= 0.10,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = args.out / f"gateway-{stamp}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    from mlapi_bench.plots import gateway_overhead

    png = gateway_overhead(
        results,
        args.out / f"gateway-{stamp}.png",
        f"gateway ({args.workers} workers) vs direct Triton, digits 8x8, medians of {args.rounds}",
    )
    _print_table(results)
    for protocol, figures in by_protocol.items():
        print(
            f"gateway ({protocol} to Triton) adds {figures['added_p50_ms']:.2f} ms to p50 at "
            f"1 connection (target <= 1 ms); sustains {figures['throughput_share']:.1%} of "
            "direct Triton throughput at 16 connections (target >= 10%)"
        )
    print(f"written: {out}, {png}")
    return 0


def _interleaved_rounds(
    targets: dict[str, tuple[str, Path, str]], rounds: int, duration_s: int
) -> dict[str, dict[str, list[dict]]]:
    """wrk runs of every target at 1 and 16 connections, ``rounds`` times, after a warm-up."""
    for url, body, bearer in targets.values():  # warm up every path
        _wrk(url, body, bearer, 4, 2)
    runs: dict[str, dict[str, list[dict]]] = {n: {"c1": [], "c16": []} for n in targets}
    # Interleaved so that drift on a shared machine hits every target alike.
    steps = rounds * 2 * len(targets)
    done = 0
    for round_number in range(rounds):
        for connections in (1, 16):
            for name, (url, body, bearer) in targets.items():
                run = _wrk(url, body, bearer, connections, duration_s)
                runs[name][f"c{connections}"].append(run)
                done += 1
                print(
                    f"[{done}/{steps}] round {round_number + 1} {name} @{connections}: "
                    f"p50 {run['p50_us'] / 1000:.2f} ms, {run['rps']:.0f} req/s",
                    flush=True,
                )
    return runs


def _print_table(results: dict[str, dict[str, dict]]) -> None:
    rows = [
        ("target", "p50 @1 conn (ms)", "p99 @1 conn (ms)", "req/s @16 conn", "p50 @16 conn (ms)")
    ]
    for name, r in results.items():
        rows.append(
            (
                name,
                f"{r['c1']['p50_us'] / 1000:.2f}",
                f"{r['c1']['p99_us'] / 1000:.2f}",
                f"{r['c16']['rps']:.0f}",
                f"{r['c16']['p50_us'] / 1000:.2f}",
            )
        )
    for row in rows:
        print(f"{row[0]:<13} {row[1]:>17} {row[2]:>17} {row[3]:>15} {row[4]:>18}")


if __name__ == "__main__":
    sys.exit(main())
