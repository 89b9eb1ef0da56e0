"""Results on disk: a CSV with perf_analyzer's column names, a JSON summary, a text table.

Columns perf_analyzer writes with ``-f`` are kept under its names and in its units (latencies in
µs; ``Inferences/Second`` = requests per second here, every request having batch size 1). Its
``Client Send``/``Client Recv`` columns are not measured by this harness and are left out; the
rest of the columns are ours and named plainly.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlapi_bench.measure import Measurement

LEVEL_COLUMN = {"concurrency": "Concurrency", "request_rate": "Request Rate"}
PA_COLUMNS = (
    "Inferences/Second",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
)
OWN_COLUMNS = (
    "model",
    "protocol",
    "label",
    "processes",
    "window_s",
    "requests",
    "errors",
    "error_kinds",
    "sent_per_s",
    "server_avg_batch_size",
)


def row(m: Measurement) -> dict[str, Any]:
    """A flat result row (perf_analyzer's columns first), latencies in µs."""
    c, s = m.client, m.server
    network = c.avg_latency_us - s.server_total_us if not math.isnan(c.avg_latency_us) else math.nan
    return {
        LEVEL_COLUMN[m.spec.mode]: m.spec.level,
        "Inferences/Second": c.throughput_per_s,
        "Network+Server Send/Recv": network,
        "Server Queue": s.queue_us,
        "Server Compute Input": s.compute_input_us,
        "Server Compute Infer": s.compute_infer_us,
        "Server Compute Output": s.compute_output_us,
        "p50 latency": c.percentiles_us[50],
        "p90 latency": c.percentiles_us[90],
        "p95 latency": c.percentiles_us[95],
        "p99 latency": c.percentiles_us[99],
        "Avg latency": c.avg_latency_us,
        "model": m.spec.model,
        "protocol": m.spec.endpoint.protocol,
        "label": m.label,
        "processes": m.processes,
        "window_s": c.window_s,
        "requests": c.completed,
        "errors": c.errors,
        "error_kinds": ";".join(f"{k}={v}" for k, v in c.error_kinds.items()),
        "sent_per_s": c.sent / c.window_s,
        "server_avg_batch_size": s.avg_batch_size,
        # Short aliases used by the summary code and the plots.
        "mode": m.spec.mode,
        "level": m.spec.level,
        "throughput_per_s": c.throughput_per_s,
        "p99_us": c.percentiles_us[99],
    }


def csv_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    levels = [col for col in LEVEL_COLUMN.values() if any(col in r for r in rows)]
    return [*levels, *PA_COLUMNS, *OWN_COLUMNS]


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=csv_columns(rows), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _csv_value(v) for k, v in r.items()})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 1)
    return value


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def git_revision(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2, default=_json_default, allow_nan=False) + "\n")


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def clean(value: Any) -> Any:
    """NaN -> None recursively, so the JSON summary is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def results_dir(base: Path, now: datetime | None = None) -> Path:
    """``base/<UTC date>/<UTC time>`` (created): runs on one day sit together, none overwritten."""
    now = now or datetime.now(timezone.utc)
    path = base / now.strftime("%Y-%m-%d") / now.strftime("%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


def table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, heading) columns; floats rounded for reading."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for key, _ in columns:
            value = r.get(key, "")
            if isinstance(value, float):
                value = (
                    "-"
                    if math.isnan(value)
                    else (f"{value:.0f}" if abs(value) >= 10 else f"{value:.2f}")
                )
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SWEEP_COLUMNS = (
    ("model", "model"),
    ("protocol", "proto"),
    ("label", "config"),
    ("mode", "mode"),
    ("level", "load"),
    ("throughput_per_s", "infer/s"),
    ("p50 latency", "p50 us"),
    ("p99 latency", "p99 us"),
    ("Server Queue", "queue us"),
    ("Server Compute Infer", "infer us"),
    ("server_avg_batch_size", "batch"),
    ("errors", "errors"),
)
