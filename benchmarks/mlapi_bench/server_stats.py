"""Server-side times for a window, from Triton's statistics API (cumulative counters, diffed).

Triton keeps, per model version, cumulative counts and nanosecond totals for the queue and the
three compute phases, plus inference and execution counts. Two snapshots bracket a measurement
window; their difference gives the server's average per request inside that window, and the
average batch the scheduler formed (inferences / executions).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ServerCounters:
    """Cumulative counters of one model (summed over its versions)."""

    success_count: int = 0
    fail_count: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0

    def __sub__(self, other: ServerCounters) -> ServerCounters:
        return ServerCounters(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )

    @classmethod
    def parse(cls, statistics: dict[str, Any], model: str) -> ServerCounters:
        """Sum the counters of every version of ``model`` in a statistics reply.

        Accepts the reply as ``AsyncClient.inference_statistics`` returns it over either
        protocol (snake_case, integers), and protobuf's default JSON (camelCase, int64 as
        strings), as other tools write it.
        """
        entries = statistics.get("model_stats", statistics.get("modelStats", []))
        totals = dict.fromkeys((f.name for f in fields(cls)), 0)
        for entry in entries:
            if entry.get("name") != model:
                continue
            infer = entry.get("inference_stats", entry.get("inferenceStats", {}))
            for phase in PHASES:
                stat = infer.get(phase) or infer.get(_camel(phase)) or {}
                if phase in ("success", "fail"):
                    totals[f"{phase}_count"] += int(stat.get("count", 0))
                else:
                    totals[f"{phase}_ns"] += int(stat.get("ns", 0))
            totals["inference_count"] += int(
                entry.get("inference_count", entry.get("inferenceCount", 0))
            )
            totals["execution_count"] += int(
                entry.get("execution_count", entry.get("executionCount", 0))
            )
        return cls(**totals)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class ServerWindow:
    """Server averages over a window, in microseconds per successful request."""

    requests: int
    failures: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    avg_batch_size: float

    @classmethod
    def between(cls, before: ServerCounters, after: ServerCounters) -> ServerWindow:
        delta = after - before
        per = max(delta.success_count, 1)
        return cls(
            requests=delta.success_count,
            failures=delta.fail_count,
            queue_us=delta.queue_ns / per / 1e3,
            compute_input_us=delta.compute_input_ns / per / 1e3,
            compute_infer_us=delta.compute_infer_ns / per / 1e3,
            compute_output_us=delta.compute_output_ns / per / 1e3,
            avg_batch_size=delta.inference_count / delta.execution_count
            if delta.execution_count
            else 0.0,
        )

    @property
    def server_total_us(self) -> float:
        return (
            self.queue_us + self.compute_input_us + self.compute_infer_us + self.compute_output_us
        )
