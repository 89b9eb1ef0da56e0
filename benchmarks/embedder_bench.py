"""text_embedder's batching: served sentences/s at 1 and 16 concurrent, per config variant, in one run.

    .venv/bin/python benchmarks/embedder_bench.py [--window-s 4] [--repeats 2] [--variants a,b]

Starts its own tritonserver (free ports) with only the three text_embedder models of the shipped
repository, then, per repeat and per variant (the tokenizer's ``pad_buckets`` and the encoder's
dynamic batching and instances, applied by reloading the two steps with a config override),
measures a window at 1 and a window at 16 concurrent one-text HTTP requests, alternated. The
texts are cache_bench.py's (6-13 words and a number); ``--prose`` uses the 184 sentences of
CPython's documentation of docs/embeddings.md instead. In-process ONNX Runtime on the same texts
(the served files, one thread, batch 1 and 16, each batch padded to its longest) runs in the
same process between the served windows.

Writes benchmarks/results/<date>/<time>/embedder_bench.{json,md}. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from cache_bench import _texts
from tritonclient.utils import InferenceServerException

from mlapi_bench.report import results_dir
from mlapi_bench.threaded import run_threads
from mlapi_client import access
from mlapi_tools.local.triton_process import Ports, TritonServer
from mlapi_tools.semantic_pairs.embedding import LocalEmbedder

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("text_embedder_tokenizer", "text_embedder_encoder", "text_embedder")
B = "16,32,64,128,256"
# Each variant: tokenizer pad_buckets and queue delay, encoder queue delay (us), preferred batch
# sizes and instances.
VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"buckets": "", "delay_us": 0, "preferred": [], "instances": 2, "tok_delay_us": 0},
    "buckets": {"buckets": B, "delay_us": 0, "preferred": [], "instances": 2, "tok_delay_us": 0},
    "buckets_d500us": {
        "buckets": B, "delay_us": 500, "preferred": [], "instances": 2, "tok_delay_us": 0
    },
    "shipped_buckets_d1ms": {
        "buckets": B, "delay_us": 1000, "preferred": [], "instances": 2, "tok_delay_us": 0
    },
    "buckets_d2ms": {
        "buckets": B, "delay_us": 2000, "preferred": [], "instances": 2, "tok_delay_us": 0
    },
    "buckets_d1ms_tok500us": {
        "buckets": B, "delay_us": 1000, "preferred": [], "instances": 2, "tok_delay_us": 500
    },
    "buckets_d2ms_pref": {
        "buckets": B, "delay_us": 2000, "preferred": [8, 16], "instances": 2, "tok_delay_us": 0
    },
    "buckets_d2ms_1inst": {
        "buckets": B, "delay_us": 2000, "preferred": [], "instances": 1, "tok_delay_us": 0
    },
}  # fmt: skip


def _prose() -> list[str]:
    from pydoc_data.topics import topics

    sentences = []
    for text in topics.values():
        for part in text.replace("\n", " ").split(". "):
            words = part.split()
            if 1 <= len(words) <= 80 and part[:1].isalpha():
                sentences.append(" ".join(words) + ".")
    return sentences[:: max(1, len(sentences) // 184)][:184]


def _apply(client: httpclient.InferenceServerClient, variant: dict[str, Any]) -> None:
    tokenizer = client.get_model_config("text_embedder_tokenizer")
    tokenizer["parameters"]["pad_buckets"] = {"string_value": variant["buckets"]}
    tokenizer["dynamic_batching"]["max_queue_delay_microseconds"] = variant["tok_delay_us"]
    encoder = client.get_model_config("text_embedder_encoder")
    batching = encoder["dynamic_batching"]
    batching["max_queue_delay_microseconds"] = variant["delay_us"]
    batching["preferred_batch_size"] = variant["preferred"]
    encoder["instance_group"][0]["count"] = variant["instances"]
    client.load_model("text_embedder_tokenizer", config=json.dumps(tokenizer))
    client.load_model("text_embedder_encoder", config=json.dumps(encoder))
    client.load_model("text_embedder")
    deadline = time.monotonic() + 120
    while not all(client.is_model_ready(m) for m in MODELS):
        if time.monotonic() > deadline:
            raise RuntimeError("text_embedder did not become ready after the reload")
        time.sleep(0.2)


def _window(url: str, texts: list[str], concurrency: int, window_s: float) -> tuple[float, ...]:
    lock, cursor, latencies, shed = threading.Lock(), [0], [], [0]
    end = time.monotonic() + window_s

    def worker() -> None:
        client = access.with_key(httpclient.InferenceServerClient(url))
        while time.monotonic() < end:
            with lock:
                cursor[0] += 1
                text = texts[cursor[0] % len(texts)]
            tensor = httpclient.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
            start = time.perf_counter()
            try:
                client.infer("text_embedder", [tensor])
            except InferenceServerException:  # shed (queue timeout): counted, not a sentence
                with lock:
                    shed[0] += 1
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
        client.close()

    elapsed = run_threads(worker, concurrency)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return len(latencies) / elapsed, float(p50), float(p99), shed[0]


def _in_process(texts: list[str]) -> dict[str, float]:
    local = LocalEmbedder(ROOT / "model_repository", threads=1)
    out = {}
    for batch in (1, 16):
        local.embed(texts[:32], batch=batch)
        start = time.perf_counter()
        local.embed(texts[:400], batch=batch)
        out[f"batch{batch}"] = len(texts[:400]) / (time.perf_counter() - start)
    return out


def measure(url: str, texts: list[str], names: list[str], window_s: float, repeats: int) -> Any:
    """Windows per repeat and variant (c1 then c16), in-process runs between the variants."""
    client = access.with_key(httpclient.InferenceServerClient(url))
    rows: dict[str, dict[int, list[tuple[float, ...]]]] = {n: {1: [], 16: []} for n in names}
    local: dict[str, list[float]] = {"batch1": [], "batch16": []}
    for _ in range(repeats):
        for name in names:
            _apply(client, VARIANTS[name])
            _window(url, texts, 4, 1.0)  # warm the instances and their buffers
            for concurrency in (1, 16):
                rows[name][concurrency].append(_window(url, texts, concurrency, window_s))
            for key, value in _in_process(texts).items():
                local[key].append(value)
    client.close()
    result: dict[str, Any] = {}
    for name, levels in rows.items():
        row = {}
        for concurrency, windows in levels.items():
            row[f"c{concurrency}_sentences_per_s"] = round(
                statistics.median(w[0] for w in windows), 1
            )
            row[f"c{concurrency}_p50_ms"] = round(statistics.median(w[1] for w in windows), 2)
            row[f"c{concurrency}_p99_ms"] = round(statistics.median(w[2] for w in windows), 2)
        row["shed"] = sum(w[3] for ws in levels.values() for w in ws)
        row["c16_over_c1"] = round(row["c16_sentences_per_s"] / row["c1_sentences_per_s"], 2)
        result[name] = row
    result["in_process"] = {k: round(statistics.median(v), 1) for k, v in local.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--prose", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    texts = _prose() if args.prose else _texts(4000)
    with tempfile.TemporaryDirectory() as workdir:
        repository = Path(workdir) / "repository"
        repository.mkdir()
        for model in MODELS:
            (repository / model).symlink_to(ROOT / "model_repository" / model)
        triton = TritonServer(
            [repository],
            backend_dir=Path(workdir) / "backends",
            ports=Ports.free(),
            exit_timeout_s=5,
            access_key=access.ensure_key(),
        )
        with (Path(workdir) / "tritonserver.log").open("wb") as log, triton:
            triton.start(log)
            triton.wait_ready(timeout_s=180, models=MODELS)
            result = measure(triton.http_url, texts, names, args.window_s, args.repeats)
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    settings = {k: str(v) for k, v in vars(args).items()}
    summary = {"git_revision": revision, "settings": settings, "cpus": os.cpu_count(),
               "load_average": os.getloadavg(), "variants": VARIANTS, "result": result}  # fmt: skip
    out = results_dir(args.output)
    (out / "embedder_bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    local = result.pop("in_process")
    lines = [
        f"in-process ONNX Runtime, 1 thread: batch 1 {local['batch1']} sentences/s, "
        f"batch 16 {local['batch16']} sentences/s",
        "",
        "| variant | c1 sent/s | c1 p50/p99 ms | c16 sent/s | c16 p50/p99 ms | c16/c1 | shed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result.items():
        lines.append(
            f"| {name} | {row['c1_sentences_per_s']} | {row['c1_p50_ms']} / {row['c1_p99_ms']} "
            f"| {row['c16_sentences_per_s']} | {row['c16_p50_ms']} / {row['c16_p99_ms']} "
            f"| {row['c16_over_c1']} | {row['shed']} |"
        )
    (out / "embedder_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
