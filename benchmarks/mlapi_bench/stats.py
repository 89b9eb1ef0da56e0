"""Client-side statistics: request records, the measurement window and latency percentiles.

Every request the load generator sends becomes one record (send time, completion time, outcome).
A measurement keeps the requests that *completed* inside the window, as perf_analyzer does, so
throughput is completions per second of window and nothing that failed is silently dropped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 95, 99)
OK = ""  # outcome of a successful request; anything else names the error kind


@dataclass
class Records:
    """Columns of request records; cheap to append to, to pickle and to merge across processes."""

    start_s: list[float] = field(default_factory=list)
    end_s: list[float] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)

    def add(self, start_s: float, end_s: float, outcome: str = OK) -> None:
        self.start_s.append(start_s)
        self.end_s.append(end_s)
        self.outcome.append(outcome)

    def __len__(self) -> int:
        return len(self.end_s)

    @classmethod
    def merge(cls, parts: Iterable[Records]) -> Records:
        merged = cls()
        for part in parts:
            merged.start_s.extend(part.start_s)
            merged.end_s.extend(part.end_s)
            merged.outcome.extend(part.outcome)
        return merged


def percentile(values: Sequence[float] | np.ndarray, pct: float) -> float:
    """Nearest-rank percentile (the value below which ``pct`` % of the samples lie).

    Nearest rank always returns an observed latency, never an interpolation between two, which is
    what perf_analyzer reports too. NaN for no samples.
    """
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if ordered.size == 0:
        return math.nan
    rank = math.ceil(pct / 100.0 * ordered.size)
    return float(ordered[rank - 1])


@dataclass(frozen=True)
class WindowStats:
    """What the client saw in one measurement window. Latencies in microseconds."""

    window_s: float
    completed: int
    errors: int
    error_kinds: dict[str, int]
    throughput_per_s: float
    avg_latency_us: float
    percentiles_us: dict[int, float]
    sent: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.completed if self.completed else 0.0


def window_stats(records: Records, t0_s: float, t1_s: float) -> WindowStats:
    """Statistics of the requests that completed in [t0_s, t1_s).

    Throughput counts successful completions only; errors are counted beside it, by kind.
    Latencies are those of the successful requests.
    """
    if t1_s <= t0_s:
        raise ValueError(f"empty window [{t0_s}, {t1_s})")
    start = np.asarray(records.start_s, dtype=np.float64)
    end = np.asarray(records.end_s, dtype=np.float64)
    outcome = np.asarray(records.outcome, dtype=object)
    inside = (end >= t0_s) & (end < t1_s)
    ok = inside & (outcome == OK)
    latencies_us = (end[ok] - start[ok]) * 1e6
    kinds = Counter(str(o) for o in outcome[inside & (outcome != OK)])
    window_s = t1_s - t0_s
    sent = int(np.count_nonzero((start >= t0_s) & (start < t1_s)))
    return WindowStats(
        window_s=window_s,
        completed=int(np.count_nonzero(inside)),
        errors=sum(kinds.values()),
        error_kinds=dict(sorted(kinds.items())),
        throughput_per_s=int(np.count_nonzero(ok)) / window_s,
        avg_latency_us=float(latencies_us.mean()) if latencies_us.size else math.nan,
        percentiles_us={p: percentile(latencies_us, p) for p in PERCENTILES},
        sent=sent,
    )
