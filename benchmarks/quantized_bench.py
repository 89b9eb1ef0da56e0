"""FP32 against INT8 (static QDQ and dynamic), in-process and served, interleaved in one run.

    .venv/bin/python benchmarks/quantized_bench.py [--rounds 5] [--window-s 3]

In-process (onnxruntime, one intra-op thread): median latency per call of each digits graph
(versions 2 and 3, their INT8 graphs under build/quantized) at batch 1 and 64, and of the text
encoder and its INT8 graphs on one 16-token sentence, rounds alternating between the graphs.
Served: a tritonserver of its own (free ports) with digits_classifier only, one-row gRPC
requests to versions 2, 4, 3 and 5 at 1 and 16 concurrent, windows alternated.
Accuracy and cosine figures come from build/quantized/report.json (`make models`).

Writes benchmarks/results/<date>/<time>/quantized_bench.{json,md}. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from mlapi_bench.report import results_dir
from mlapi_bench.threaded import run_threads
from mlapi_client import access
from mlapi_tools.build.quantize import OUT, session
from mlapi_tools.local.triton_process import Ports, TritonServer

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "model_repository" / "digits_classifier"
WIDTH = {2: 64, 3: 784, 4: 64, 5: 784}


def _graphs() -> dict[str, tuple[Path, str]]:
    built = ROOT / OUT
    graphs = {}
    for version in (2, 3):
        graphs[f"digits v{version} fp32"] = (CLASSIFIER / str(version) / "model.onnx", "digits")
        for method in ("static", "dynamic"):
            path = built / "digits_classifier" / f"{version}-{method}" / "model.onnx"
            graphs[f"digits v{version} int8 {method}"] = (path, "digits")
    encoder = ROOT / "model_repository" / "text_embedder_encoder" / "1" / "model.onnx"
    graphs["encoder fp32"] = (encoder, "encoder")
    for method in ("static", "dynamic"):
        path = built / "text_embedder_encoder" / method / "model.onnx"
        graphs[f"encoder int8 {method}"] = (path, "encoder")
    return {k: v for k, v in graphs.items() if v[0].is_file()}


def in_process(rounds: int) -> dict[str, dict[str, float]]:
    """Median ms per call of each graph, rounds alternating between graphs."""
    rng = np.random.default_rng(0)
    sessions = {name: (session(path), kind) for name, (path, kind) in _graphs().items()}
    times: dict[str, dict[str, list[float]]] = {n: {} for n in sessions}
    for _ in range(rounds):
        for name, (model, kind) in sessions.items():
            if kind == "digits":
                width = 64 if " v2 " in name else 784
                feeds = {
                    f"batch{b}": {"pixels": rng.random((b, width), dtype=np.float32)}
                    for b in (1, 64)
                }
            else:
                ids = np.array([[101] + [2000 + i for i in range(14)] + [102]], np.int64)
                feeds = {"seq16": {"input_ids": ids, "attention_mask": np.ones_like(ids)}}
            for label, feed in feeds.items():
                model.run(None, feed)
                start = time.perf_counter()
                for _ in range(20):
                    model.run(None, feed)
                times[name].setdefault(label, []).append((time.perf_counter() - start) / 20e-3)
    return {
        n: {f"{k}_ms": round(statistics.median(v), 4) for k, v in rows.items()}
        for n, rows in times.items()
    }


def _window(url: str, version: int, concurrency: int, window_s: float) -> tuple[float, float]:
    lock, latencies = threading.Lock(), []
    end = time.monotonic() + window_s
    pixels = np.random.default_rng(version).random((1, WIDTH[version]), dtype=np.float32)

    def worker() -> None:
        client = access.with_key(grpcclient.InferenceServerClient(url))
        tensor = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        while time.monotonic() < end:
            start = time.perf_counter()
            client.infer("digits_classifier", [tensor], model_version=str(version))
            with lock:
                latencies.append(time.perf_counter() - start)
        client.close()

    elapsed = run_threads(worker, concurrency)
    return len(latencies) / elapsed, statistics.median(latencies) * 1e3


def served(window_s: float, repeats: int) -> dict[str, dict[str, float]]:
    """Infer/s and p50 of versions 2, 4, 3, 5 at c1 and c16, windows alternated."""
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        repository = Path(workdir) / "repository"
        repository.mkdir()
        (repository / "digits_classifier").symlink_to(CLASSIFIER)
        triton = TritonServer(
            [repository],
            backend_dir=Path(workdir) / "backends",
            ports=Ports.free(),
            exit_timeout_s=5,
            access_key=access.ensure_key(),
        )
        with (Path(workdir) / "tritonserver.log").open("wb") as log, triton:
            triton.start(log)
            triton.wait_ready(timeout_s=180, models=["digits_classifier"])
            for _ in range(repeats):
                for version in (2, 4, 3, 5):
                    for concurrency in (1, 16):
                        key = f"v{version} c{concurrency}"
                        window = _window(triton.grpc_url, version, concurrency, window_s)
                        rows.setdefault(key, []).append(window)
    return {
        key: {
            "infer_per_s": round(statistics.median(w[0] for w in windows), 1),
            "p50_ms": round(statistics.median(w[1] for w in windows), 3),
        }
        for key, windows in rows.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    local = in_process(args.rounds)
    remote = served(args.window_s, args.repeats)
    local_after = in_process(args.rounds)  # the in-process figures on both sides of the served
    for name, row in local.items():
        for key in row:
            row[key] = round(statistics.median([row[key], local_after[name][key]]), 4)
    report_path = ROOT / OUT / "report.json"
    accuracy = json.loads(report_path.read_text()) if report_path.is_file() else {}
    result = {"settings": {k: str(v) for k, v in vars(args).items()}, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "in_process": local, "served": remote,
              "accuracy": accuracy}  # fmt: skip
    out = results_dir(args.output)
    (out / "quantized_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| graph | in-process ms per call |", "|---|---|"]
    lines += [f"| {n} | {', '.join(f'{k} {v}' for k, v in r.items())} |" for n, r in local.items()]
    lines += ["", "| served | infer/s | p50 ms |", "|---|---|---|"]
    lines += [f"| {k} | {r['infer_per_s']} | {r['p50_ms']} |" for k, r in remote.items()]
    (out / "quantized_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
