"""The limits measured beside every result, and the ratios a report states.

* transport floor: ``bench_identity`` on the same server, same protocol, same load;
* compute limit: the model in-process with onnxruntime at the same batch sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlapi_bench.inprocess import InProcessResult, classifier_limit, pipeline_limit
from mlapi_bench.payloads import IDENTITY_MODEL
from mlapi_bench.stack import MODEL_REPOSITORY

SERVED_VERSION = 2  # the version the harness sends digits_classifier payloads to (PAYLOAD_VERSIONS)


def in_process_limits(
    models: Sequence[str], batch_sizes: Sequence[int], duration_s: float
) -> list[InProcessResult]:
    onnx_file = MODEL_REPOSITORY / "digits_classifier" / str(SERVED_VERSION) / "model.onnx"
    results: list[InProcessResult] = []
    if "digits_classifier" in models:
        results += classifier_limit(onnx_file, batch_sizes, duration_s)
    if "digits" in models:
        results += pipeline_limit(onnx_file, batch_sizes, duration_s)
    return results


def _nearest(
    results: Sequence[InProcessResult], model: str, batch: float
) -> InProcessResult | None:
    candidates = [r for r in results if r.model == model]
    if not candidates:
        return None
    return min(candidates, key=lambda r: abs(r.batch_size - batch))


def ratios(
    rows: Sequence[dict[str, Any]], in_process: Sequence[InProcessResult]
) -> list[dict[str, Any]]:
    """Per served row: throughput over identity's (same protocol, level) and over in-process.

    The in-process reference is the run at the batch size nearest to the batch the server
    actually formed in that window (its average), i.e. the same work per execution.
    """
    identity = {
        (r["protocol"], r["mode"], r["level"]): r["throughput_per_s"]
        for r in rows
        if r["model"] == IDENTITY_MODEL
    }
    out = []
    for r in rows:
        if r["model"] == IDENTITY_MODEL:
            continue
        floor = identity.get((r["protocol"], r["mode"], r["level"]))
        batch = max(r["server_avg_batch_size"], 1.0)
        limit = _nearest(in_process, r["model"], batch)
        out.append(
            {
                "model": r["model"],
                "protocol": r["protocol"],
                "label": r["label"],
                "mode": r["mode"],
                "level": r["level"],
                "throughput_per_s": r["throughput_per_s"],
                "identity_per_s": floor if floor is not None else float("nan"),
                "vs_identity": r["throughput_per_s"] / floor if floor else float("nan"),
                "in_process_batch": limit.batch_size if limit else 0,
                "in_process_per_s": limit.inferences_per_s if limit else float("nan"),
                "vs_in_process": r["throughput_per_s"] / limit.inferences_per_s
                if limit
                else float("nan"),
            }
        )
    return out


RATIO_COLUMNS = (
    ("model", "model"),
    ("protocol", "proto"),
    ("label", "config"),
    ("level", "load"),
    ("throughput_per_s", "infer/s"),
    ("identity_per_s", "identity infer/s"),
    ("vs_identity", "vs identity"),
    ("in_process_batch", "in-proc batch"),
    ("in_process_per_s", "in-proc infer/s"),
    ("vs_in_process", "vs in-proc"),
)
INPROCESS_COLUMNS = (
    ("model", "model"),
    ("batch_size", "batch"),
    ("inferences_per_s", "infer/s"),
    ("batch_latency_us", "us per batch"),
)
