"""Overhead of the gateway's OpenAI route over its native stream route (text_generator).

Not a test. Starts its own tritonserver and gateway on free ports (open auth, the unlimited
plan: no limit is measured), then, in one run with the two routes taking turns request by
request (or round by round), measures the time to first token of single streams and the
aggregate tokens/s of ``--streams`` concurrent streams, same prompt, seed and max_tokens:

- native: ``POST /v1/models/text_generator/stream`` (the gateway's SSE events)
- openai: ``POST /openai/v1/completions`` with ``stream: true`` (OpenAI chunks)

    .venv/bin/python benchmarks/openai_bench.py [--requests 40] [--streams 16] [--rounds 4]

Targets: TTFT p50 of openai <= native + 1 ms; tokens/s at 16 streams >= 0.9 x native.
Writes benchmarks/results/openai-<time>.json (git revision, settings, every figure).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from mlapi_client import access
from mlapi_tools.local.triton_process import Ports, TritonServer

ROOT = Path(__file__).resolve().parents[1]
MODEL = "text_generator"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def stack(workdir: Path) -> Iterator[str]:
    """A tritonserver and a gateway in front of it; yields the gateway's URL."""
    triton = TritonServer(
        [ROOT / "model_repository"],
        backend_dir=workdir / "backends",
        ports=Ports.free(),
        exit_timeout_s=5,
        access_key=access.ensure_key(),
    )
    with (workdir / "tritonserver.log").open("wb") as triton_log:
        triton.start(triton_log)
        try:
            try:
                triton.wait_ready(timeout_s=180)
            except RuntimeError as exc:
                tail = (workdir / "tritonserver.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{exc}\n{tail}") from exc
            port = _free_port()
            env = {
                **os.environ,
                "MLAPI_GATEWAY_TRITON_GRPC_URL": triton.grpc_url,
                "MLAPI_GATEWAY_TRITON_HTTP_URL": triton.http_url,
                "MLAPI_GATEWAY_AUTH_MODE": "open",
                "MLAPI_GATEWAY_OPEN_MODE_PLAN": "unlimited",
                "MLAPI_GATEWAY_ACCESS_LOG": "false",
                "MLAPI_GATEWAY_MAX_STREAMS_PER_KEY": "64",
                "MLAPI_GATEWAY_JOBS_DB": str(workdir / "jobs.sqlite3"),
            }
            with (workdir / "gateway.log").open("wb") as gateway_log:
                gateway = subprocess.Popen(
                    [sys.executable, "-m", "mlapi_gateway", "--port", str(port)],
                    cwd=ROOT, env=env, stdout=gateway_log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                try:
                    url = f"http://127.0.0.1:{port}"
                    _wait_up(url, gateway)
                    yield url
                finally:
                    gateway.terminate()
                    gateway.wait(timeout=30)
        finally:
            triton.stop()


def _wait_up(url: str, gateway: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert gateway.poll() is None, "the gateway exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("the gateway did not get ready")


def request_of(route: str, prompt: str, max_tokens: int, seed: int) -> tuple[str, dict[str, Any]]:
    """The path and body of one stream on ``route`` (native or openai)."""
    if route == "native":
        inputs = {"text_input": [prompt], "max_tokens": [max_tokens], "seed": [seed]}
        return f"/v1/models/{MODEL}/stream", {"inputs": inputs}
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "seed": seed}
    return "/openai/v1/completions", {**body, "stream": True}


def _text_of(route: str, line: str) -> str:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return ""
    data = json.loads(line[len("data: ") :])
    if route == "native":
        return str(data.get("outputs", {}).get("text_output", [""])[0])
    choices = data.get("choices") or [{}]
    return str(choices[0].get("text", ""))


async def one_stream(
    client: httpx.AsyncClient, route: str, prompt: str, max_tokens: int, seed: int
) -> tuple[float, int]:
    """(seconds to the first token, tokens received) of one stream."""
    path, body = request_of(route, prompt, max_tokens, seed)
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    async with client.stream("POST", path, json=body) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if _text_of(route, line):
                tokens += 1
                if not first:
                    first = time.perf_counter() - start
    return first, tokens


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """TTFT of single streams and tokens/s of concurrent ones, routes interleaved."""
    ttft: dict[str, list[float]] = {"native": [], "openai": []}
    rate: dict[str, list[float]] = {"native": [], "openai": []}
    limits = httpx.Limits(max_connections=args.streams * 2)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for route in ("native", "openai"):  # warm-up, not counted
            await one_stream(client, route, args.prompt, 4, 0)
        for i in range(args.requests):
            order = ("native", "openai") if i % 2 == 0 else ("openai", "native")
            for route in order:
                first, _ = await one_stream(client, route, args.prompt, args.ttft_tokens, i)
                ttft[route].append(first)
        for i in range(args.rounds):
            order = ("native", "openai") if i % 2 == 0 else ("openai", "native")
            for route in order:
                start = time.perf_counter()
                done = await asyncio.gather(
                    *(
                        one_stream(client, route, args.prompt, args.max_tokens, 1000 * i + s)
                        for s in range(args.streams)
                    )
                )
                rate[route].append(sum(t for _, t in done) / (time.perf_counter() - start))
    out: dict[str, Any] = {}
    for route in ("native", "openai"):
        out[route] = {
            "ttft_p50_ms": float(np.median(ttft[route]) * 1000),
            "ttft_p90_ms": float(np.percentile(ttft[route], 90) * 1000),
            "tokens_per_s": float(np.median(rate[route])),
            "tokens_per_s_rounds": rate[route],
        }
    out["ttft_p50_overhead_ms"] = out["openai"]["ttft_p50_ms"] - out["native"]["ttft_p50_ms"]
    out["tokens_per_s_ratio"] = out["openai"]["tokens_per_s"] / out["native"]["tokens_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running gateway (open auth); default: start one")
    parser.add_argument("--prompt", default="The ")
    parser.add_argument("--requests", type=int, default=40, help="single streams per route")
    parser.add_argument("--ttft-tokens", type=int, default=4)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of concurrent streams")
    args = parser.parse_args()
    if args.url:
        figures = asyncio.run(measure(args.url, args))
    else:
        with tempfile.TemporaryDirectory() as workdir, stack(Path(workdir)) as url:
            figures = asyncio.run(measure(url, args))
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    result = {"revision": revision, "settings": vars(args), "figures": figures}
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"openai-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    native, openai_ = figures["native"], figures["openai"]
    sys.stdout.write(
        f"| route | TTFT p50 ms | TTFT p90 ms | tokens/s at {args.streams} streams |\n"
        "|---|---|---|---|\n"
        f"| native | {native['ttft_p50_ms']:.2f} | {native['ttft_p90_ms']:.2f} | {native['tokens_per_s']:.0f} |\n"
        f"| openai | {openai_['ttft_p50_ms']:.2f} | {openai_['ttft_p90_ms']:.2f} | {openai_['tokens_per_s']:.0f} |\n"
        f"\nTTFT p50 overhead {figures['ttft_p50_overhead_ms']:+.2f} ms (target <= +1 ms); "
        f"tokens/s ratio {figures['tokens_per_s_ratio']:.3f} (target >= 0.9). Written {path}\n"
    )


if __name__ == "__main__":
    main()
