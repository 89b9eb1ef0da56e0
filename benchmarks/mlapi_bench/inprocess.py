"""The compute limit: the same ONNX model (and the digits pipeline) run in this process, no server.

The served numbers are compared with these at the same batch sizes, so a report can say how
much of the machine's raw capacity the serving stack delivers. onnxruntime runs with the thread
count the model's config asks for (``intra_op_thread_count``, 1 in the shipped config).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlapi_bench.payloads import payloads


@dataclass(frozen=True)
class InProcessResult:
    model: str
    batch_size: int
    inferences_per_s: float
    batch_latency_us: float


def measure_callable(
    run: Callable[[], Any], batch_size: int, duration_s: float, rounds: int = 3
) -> tuple[float, float]:
    """(inferences per second, mean latency per call in µs) of ``run``: the best of ``rounds``.

    On a shared machine interference only slows a round down, so the best round is the limit.
    """
    run()  # warm-up: first call allocates
    best_rate, best_latency = 0.0, float("nan")
    for _ in range(rounds):
        calls = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < duration_s / rounds:
            run()
            calls += 1
        rate = calls * batch_size / elapsed
        if rate > best_rate:
            best_rate, best_latency = rate, elapsed / max(calls, 1) * 1e6
    return best_rate, best_latency


def classifier_session(model_file: Path, intra_op_threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])


def classifier_limit(
    model_file: Path, batch_sizes: Sequence[int], duration_s: float, intra_op_threads: int = 1
) -> list[InProcessResult]:
    """``digits_classifier`` alone: one session.run per batch of preprocessed pixels."""
    session = classifier_session(model_file, intra_op_threads)
    input_name = session.get_inputs()[0].name
    rows = np.concatenate(
        [p["pixels"] for p in payloads("digits_classifier", count=max(batch_sizes))]
    )
    results = []
    for batch in batch_sizes:
        feed = {input_name: rows[:batch]}

        def run(feed: dict[str, np.ndarray] = feed) -> None:
            session.run(None, feed)

        rate, latency = measure_callable(run, batch, duration_s)
        results.append(InProcessResult("digits_classifier", batch, rate, latency))
    return results


def pipeline_limit(
    model_file: Path, batch_sizes: Sequence[int], duration_s: float, intra_op_threads: int = 1
) -> list[InProcessResult]:
    """``digits``' work without a server: preprocess each image, classify the batch in one call.

    Ranking and metadata are left out (microseconds); this is the floor of what the served
    pipeline must do per batch.
    """
    from mlapi_backend.preprocessing import preprocess_digit

    session = classifier_session(model_file, intra_op_threads)
    input_name = session.get_inputs()[0].name
    images = [p["image"][0] for p in payloads("digits", count=max(batch_sizes))]
    results = []
    for batch in batch_sizes:
        chunk = images[:batch]

        def run(chunk: list[np.ndarray] = chunk) -> None:
            pixels = np.stack([preprocess_digit(image).pixels for image in chunk]).astype(
                np.float32
            )
            session.run(None, {input_name: pixels})

        rate, latency = measure_callable(run, batch, duration_s)
        results.append(InProcessResult("digits", batch, rate, latency))
    return results
