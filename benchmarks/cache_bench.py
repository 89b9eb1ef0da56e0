"""The caches' speed and text_embedder's batching, measured interleaved in one run.

    .venv/bin/python benchmarks/cache_bench.py [--rounds 30] [--window-s 5]
                                               [--wrk-rounds 3] [--wrk-window-s 5]

Starts its own tritonserver (free ports) and one gateway process (open auth, exact cache on
digits and text_embedder, semantic cache on text_generator), then:

- exact, with wrk (C, one connection; benchmarks/cache_wrk.lua): alternating windows of
  digits bodies never sent before (misses) and of one body sent again (hits), each window's
  outcomes checked against the gateway's cache counters. The latency a caller sees without the
  Python client's own time in it;
- exact: per round a digits request never sent before (a miss) and the same again (a hit), at
  the gateway; the same for text_embedder; and GET /healthz, the gateway's own round trip;
- semantic: per round a 64-token temperature-0 generation of a new prompt (a miss) and of a
  paraphrase of it (a hit), time to the stream's end;
- text_embedder throughput on Triton (no cache on it): windows at 1 and at 16 concurrent
  requests of one text each, alternated, in sentences/s, beside in-process ONNX Runtime on the
  same texts (the served tokenizer and encoder files; batch 1 and batch 16, one thread).

Writes benchmarks/results/<date>/<time>/cache_bench.{json,md}. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.http as httpclient

from mlapi_bench.report import results_dir
from mlapi_bench.threaded import run_threads
from mlapi_client import access
from mlapi_tools.local.triton_process import Ports, TritonServer
from mlapi_tools.semantic_pairs.embedding import LocalEmbedder

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["tides", "volcanoes", "glaciers", "rainbows", "comets", "deserts", "forests", "rivers"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def stack(workdir: Path) -> Iterator[tuple[TritonServer, str]]:
    """Triton with the shipped repository and a gateway in front of it."""
    triton = TritonServer(
        [ROOT / "model_repository"],
        backend_dir=workdir / "backends",
        ports=Ports.free(),
        exit_timeout_s=5,
        access_key=access.ensure_key(),
    )
    with (workdir / "tritonserver.log").open("wb") as log_file:
        triton.start(log_file)
        try:
            triton.wait_ready(timeout_s=180)
            port = _free_port()
            env = {
                **os.environ,
                "MLAPI_GATEWAY_TRITON_GRPC_URL": triton.grpc_url,
                "MLAPI_GATEWAY_TRITON_HTTP_URL": triton.http_url,
                "MLAPI_GATEWAY_AUTH_MODE": "open",
                "MLAPI_GATEWAY_OPEN_MODE_PLAN": "unlimited",
                "MLAPI_GATEWAY_ACCESS_LOG": "false",
                "MLAPI_GATEWAY_KEYS_FILE": str(workdir / "keys.json"),
                "MLAPI_GATEWAY_JOBS_DB": str(workdir / "jobs.sqlite3"),
                "MLAPI_GATEWAY_EXACT_CACHE_MODELS": '["digits", "text_embedder"]',
                "MLAPI_GATEWAY_SEMANTIC_CACHE_MODELS": '["text_generator"]',
            }
            with (workdir / "gateway.log").open("wb") as gateway_log:
                gateway = subprocess.Popen(
                    [sys.executable, "-m", "mlapi_gateway", "--port", str(port), "--workers", "1"],
                    env=env,
                    stdout=gateway_log,
                    stderr=subprocess.STDOUT,
                )
                try:
                    url = f"http://127.0.0.1:{port}"
                    _wait(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200)
                    yield triton, url
                finally:
                    gateway.terminate()
                    gateway.wait(30)
        finally:
            triton.stop()


def _wait(ready: Callable[[], bool], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("the gateway did not become ready")


def _timed(call: Callable[..., None], *arguments: Any) -> float:
    start = time.perf_counter()
    call(*arguments)
    return time.perf_counter() - start


def _post(client: httpx.Client, path: str, body: dict[str, Any], cache_hit: bool) -> None:
    reply = client.post(path, json=body)
    reply.raise_for_status()
    assert reply.json()["cache"]["hit"] is cache_hit, reply.json()["cache"]


def _generate(client: httpx.Client, prompt: str, cache_hit: bool) -> None:
    body = {"inputs": {"text_input": [prompt], "max_tokens": [64], "temperature": [0]}}
    with client.stream("POST", "/v1/models/text_generator/stream", json=body) as reply:
        reply.raise_for_status()
        first = None
        for line in reply.iter_lines():
            if line.startswith("data: ") and first is None:
                first = json.loads(line[6:])
        assert first is not None and first["cache"]["hit"] is cache_hit, first


def ratios(url: str, rounds: int) -> dict[str, Any]:
    """Miss and hit latencies, interleaved per round: digits, text_embedder, text_generator."""
    rng = np.random.default_rng(20261202)
    times: dict[str, list[float]] = {k: [] for k in ("digits", "text_embedder", "generation")}
    hits: dict[str, list[float]] = {k: [] for k in times}
    floor: list[float] = []  # GET /healthz: the gateway's own round trip, no model, no cache
    with httpx.Client(base_url=url, timeout=120) as client:
        _post(client, "/v1/models/digits/predict", {"pixels": [[1] * 8] * 8}, False)  # warm
        for n in range(rounds):
            pixels = {"pixels": rng.integers(0, 256, size=(8, 8)).tolist()}
            texts = {"texts": [f"Round {n}: a sentence about {SUBJECTS[n % 8]} and the sea."]}
            tag = f"{SUBJECTS[n % 8]} number {n}"
            cases = [
                ("digits", _post, (client, "/v1/models/digits/predict", pixels)),
                ("text_embedder", _post, (client, "/v1/models/text_embedder/predict", texts)),
                ("generation", _generate, (client, f"Write a short story about {tag}.")),
            ]
            floor.append(_timed(lambda: client.get("/healthz").raise_for_status()))
            for name, call, arguments in cases:
                times[name].append(_timed(call, *arguments, False))
                if name == "generation":  # the paraphrase, not the same prompt
                    arguments = (client, f"Please write a short story about {tag}.")
                hits[name].append(_timed(call, *arguments, True))
    out: dict[str, Any] = {"healthz_p50_ms": round(statistics.median(floor) * 1e3, 3)}
    for name in times:
        miss_ms, hit_ms = statistics.median(times[name]) * 1e3, statistics.median(hits[name]) * 1e3
        out[name] = {"miss_p50_ms": round(miss_ms, 3), "hit_p50_ms": round(hit_ms, 3),
                     "hit_over_miss": round(hit_ms / miss_ms, 4), "rounds": rounds}  # fmt: skip
    return out


WRK_LUA = Path(__file__).with_name("cache_wrk.lua")


def _exact_counts(client: httpx.Client) -> dict[str, float]:
    """The gateway's exact-cache outcomes of digits so far, from its /metrics."""
    counts = {"hit": 0.0, "miss": 0.0}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('mlapi_gateway_exact_cache_requests_total{model="digits"'):
            for outcome in counts:
                if f'outcome="{outcome}"' in line:
                    counts[outcome] += float(line.rsplit(" ", 1)[1])
    return counts


def wrk_digits(url: str, rounds: int, window_s: int) -> dict[str, Any] | None:
    """digits hits and misses at the gateway from wrk (C, one connection): p50s and ratio.

    Misses are bodies never sent before (four pixels from a counter), hits one body sent
    again; each window's outcomes are checked against the gateway's cache counters.
    """
    if shutil.which("wrk") is None:
        print("wrk is not installed (make system-deps): no wrk figures")
        return None
    pixels: list[list[Any]] = [[1] * 8 for _ in range(8)]
    for n, (row, col) in enumerate(((2, 2), (3, 5), (5, 3), (6, 6))):  # the counter's pixels
        pixels[row][col] = f"@{n}@"
    template = json.dumps({"pixels": pixels})
    for n in range(4):
        template = template.replace(f'"@{n}@"', "%d")
    windows: dict[str, list[dict[str, Any]]] = {"miss": [], "hit": []}
    with httpx.Client(base_url=url, timeout=30) as client:
        client.post("/v1/models/digits/predict", json=json.loads(template % (0, 0, 0, 0)))
        for n in range(rounds):
            for mode in ("miss", "hit"):
                before = _exact_counts(client)
                env = {**os.environ, "WRK_CACHE_BODY": template, "WRK_CACHE_MODE": mode,
                       "WRK_CACHE_SEED": str(1 + n * 8000)}  # fmt: skip
                command = ["wrk", "-t1", "-c1", f"-d{window_s}s", "-s", str(WRK_LUA),
                           url + "/v1/models/digits/predict"]  # fmt: skip
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                line = next(x for x in out.stdout.splitlines() if x.startswith("WRK_JSON "))
                stats = json.loads(line[len("WRK_JSON ") :])
                after = _exact_counts(client)
                stats["cache_outcome_share"] = (after[mode] - before[mode]) / stats["requests"]
                if stats["errors_status"] or stats["errors_socket"]:
                    raise RuntimeError(f"wrk saw errors: {stats}")
                windows[mode].append(stats)
                share, outcome = stats["cache_outcome_share"], "hits" if mode == "hit" else "misses"
                print(f"wrk {mode} window {n + 1}/{rounds}: p50 {stats['p50_us']} us, "
                      f"{share:.1%} of them {outcome}", flush=True)  # fmt: skip
    miss = statistics.median(w["p50_us"] for w in windows["miss"]) / 1e3
    hit = statistics.median(w["p50_us"] for w in windows["hit"]) / 1e3
    return {"miss_p50_ms": round(miss, 3), "hit_p50_ms": round(hit, 3),
            "hit_over_miss": round(hit / miss, 4), "rounds": rounds, "windows": windows}  # fmt: skip


def _texts(count: int) -> list[str]:
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "near",
        "river",
        "bank",
        "at",
        "dawn",
    ]
    rng = np.random.default_rng(7)
    return [
        " ".join(rng.choice(words, size=int(rng.integers(6, 14)))) + f" {i}." for i in range(count)
    ]


def embedder_throughput(triton: TritonServer, window_s: float, repeats: int) -> dict[str, Any]:
    """Sentences/s at 1 and 16 concurrent one-text requests on Triton, alternated windows."""
    texts = _texts(4000)
    cursor = [0]
    lock = threading.Lock()

    def next_text() -> str:
        with lock:
            cursor[0] += 1
            return texts[cursor[0] % len(texts)]

    def window(concurrency: int) -> tuple[float, float]:
        done, latencies = [0], []
        end = time.monotonic() + window_s

        def worker() -> None:
            client = access.with_key(httpclient.InferenceServerClient(triton.http_url))
            while time.monotonic() < end:
                tensor = httpclient.InferInput("text", [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[next_text().encode()]], dtype=np.object_))
                start = time.perf_counter()
                client.infer("text_embedder", [tensor])
                with lock:
                    done[0] += 1
                    latencies.append(time.perf_counter() - start)
            client.close()

        return done[0] / run_threads(worker, concurrency), statistics.median(latencies) * 1e3

    window(4)  # warm
    rows: dict[int, list[tuple[float, float]]] = {1: [], 16: []}
    for _ in range(repeats):
        for concurrency in (1, 16):
            rows[concurrency].append(window(concurrency))
    result = {
        f"triton_c{c}": {
            "sentences_per_s": round(statistics.median(r[0] for r in rs), 1),
            "latency_p50_ms": round(statistics.median(r[1] for r in rs), 2),
        }
        for c, rs in rows.items()
    }
    result["c16_over_c1"] = round(
        result["triton_c16"]["sentences_per_s"] / result["triton_c1"]["sentences_per_s"], 2
    )
    local = LocalEmbedder(ROOT / "model_repository", threads=1)
    sample = texts[:800]
    for batch in (1, 16):
        local.embed(sample[:32], batch=batch)
        start = time.perf_counter()
        local.embed(sample, batch=batch)
        result[f"in_process_batch{batch}_sentences_per_s"] = round(
            len(sample) / (time.perf_counter() - start), 1
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wrk-rounds", type=int, default=3)
    parser.add_argument("--wrk-window-s", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir, stack(Path(workdir)) as (triton, url):
        digits_wrk = wrk_digits(url, args.wrk_rounds, args.wrk_window_s)
        cache = ratios(url, args.rounds)
        embedder = embedder_throughput(triton, args.window_s, args.repeats)
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    result = {"git_revision": revision, "settings": {k: str(v) for k, v in vars(args).items()},
              "cpus": os.cpu_count(), "caches": cache, "text_embedder": embedder,
              "digits_wrk": digits_wrk}  # fmt: skip
    out = results_dir(args.output)
    (out / "cache_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| what | miss p50 ms | hit p50 ms | hit / miss |", "|---|---|---|---|"]
    lines.insert(0, f"gateway round trip (GET /healthz) p50: {cache.pop('healthz_p50_ms')} ms\n")
    for name, row in cache.items():
        lines.append(
            f"| {name} | {row['miss_p50_ms']} | {row['hit_p50_ms']} | {row['hit_over_miss']} |"
        )
    if digits_wrk is not None:
        lines.append(
            f"| digits, wrk (C client, 1 connection) | {digits_wrk['miss_p50_ms']} | "
            f"{digits_wrk['hit_p50_ms']} | {digits_wrk['hit_over_miss']} |"
        )
    lines += ["", "| text_embedder | sentences/s |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in embedder.items()]
    (out / "cache_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
