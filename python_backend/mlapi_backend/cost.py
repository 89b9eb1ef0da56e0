"""Cost per request: measured compute time, the server's measured CPU per compute second, prices.

The cost model (docs/observability.md#cost-per-request):

    cpu_s   = compute_s x cpu_per_compute_s
    cost    = cpu_s x cpu_core_hour / 3600
            + gpu_s x gpu_hour / 3600
            + memory_gb x compute_s x gb_hour / 3600

``compute_s`` is the wall time a digits instance spent on the request's batch (from the start of
``execute`` to its answers), split over the batch's images. ``cpu_per_compute_s`` is measured:
the CPU seconds the whole server process tree (tritonserver and every Python stub, from /proc)
used over the last interval, divided by the compute seconds every digits instance of that server
recorded in the same interval (each instance keeps its running total in a small ledger file
that the others read). So the server's CPU, frontend and classifier included, is spread over the
requests that caused it. ``memory_gb`` is the tree's resident memory. ``gpu_s`` is the time a
GPU instance spent on the request (its compute time when the instance is of kind KIND_GPU):
digits' classifiers run on CPU instances here, so it is 0 and every answer's metadata says so
(``"gpu_s": 0``); the GPU-hour price applies as soon as a request reports GPU time.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Defaults: on-demand cloud list prices of late 2026 in USD, rounded (one vCPU-hour of a
# general-purpose VM, one GPU-hour of a data-centre GPU, one GB-hour of memory).
CPU_CORE_HOUR_USD = 0.048
GPU_HOUR_USD = 2.50
MEMORY_GB_HOUR_USD = 0.0065
PRICE_ENV = {
    "cpu_core_hour_usd": "MLAPI_PRICE_CPU_CORE_HOUR_USD",
    "gpu_hour_usd": "MLAPI_PRICE_GPU_HOUR_USD",
    "memory_gb_hour_usd": "MLAPI_PRICE_MEMORY_GB_HOUR_USD",
}
# The CPU per compute second assumed until the first measurement (one busy core).
INITIAL_CPU_PER_COMPUTE_S = 1.0
# Seconds between two measurements of the rate: reading the tree's /proc files (tritonserver
# has ~100 threads to look for children in) costs ~1 ms, too much for every 0.1 s drain.
MEASURE_EVERY_S = 1.0
# The rate is measured over the last RATE_WINDOW_S (at least): one second alone swung by +-20 %
# between runs on a busy 2-CPU host (the instances' ledgers are read at different moments).
RATE_WINDOW_S = 5.0
# The server's process tree is walked again at most this often, or when one of its processes
# is gone: the walk reads /proc/<pid>/task/<tid>/children for every thread (tritonserver runs
# hundreds; 12.5 ms a walk against 0.6 ms to read the known processes, measured here).
TREE_REFRESH_S = 10.0


@dataclass(frozen=True)
class Prices:
    """What an hour of each resource costs, in USD."""

    cpu_core_hour_usd: float = CPU_CORE_HOUR_USD
    gpu_hour_usd: float = GPU_HOUR_USD
    memory_gb_hour_usd: float = MEMORY_GB_HOUR_USD

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Prices:
        """Read the prices the environment sets; ValueError names a bad one."""
        values: dict[str, float] = {}
        for name, variable in PRICE_ENV.items():
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{variable} must be a number of USD, got {raw!r}") from None
            if not 0 <= value < float("inf"):
                raise ValueError(f"{variable} must be >= 0, got {raw!r}")
            values[name] = value
        return cls(**values)

    def cost_usd(self, cpu_s: float, gpu_s: float, memory_gb: float, compute_s: float) -> float:
        """Return the cost of the resources one request used."""
        return (
            cpu_s * self.cpu_core_hour_usd
            + gpu_s * self.gpu_hour_usd
            + memory_gb * compute_s * self.memory_gb_hour_usd
        ) / 3600.0


def _ticks() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of one process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _ticks()


def process_rss_gb(pid: int) -> float:
    """Resident memory of one process in GB, from /proc."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e9


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (from /proc/<pid>/task/<tid>/children)."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                pending.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def tree_usage(root: int) -> tuple[float, float]:
    """CPU seconds and resident GB of a process tree (processes that vanish are skipped)."""
    cpu, memory, _ = usage_of(tree_pids(root))
    return cpu, memory


def usage_of(pids: list[int]) -> tuple[float, float, bool]:
    """CPU seconds and resident GB of ``pids``; False third when one of them is gone."""
    cpu = memory = 0.0
    complete = True
    for pid in pids:
        try:
            cpu += process_cpu_s(pid)
            memory += process_rss_gb(pid)
        except (OSError, ValueError, IndexError):
            complete = False
    return cpu, memory, complete


class CostMeter:
    """One model instance's cost estimates, with the server's measured CPU per compute second.

    ``record`` runs on the request path (an addition under a lock); ``update`` runs off it
    (the statistics thread) and re-measures the rate from /proc and the ledger files of the
    server's instances.
    """

    def __init__(
        self, prices: Prices, server_pid: int, instance: str, ledger_dir: Path | None = None
    ) -> None:
        self.prices = prices
        self.server_pid = server_pid
        base = ledger_dir or Path(tempfile.gettempdir()) / "mlapi-cost"
        self.ledger_dir = base / str(server_pid)
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = self.ledger_dir / instance
        self.cpu_per_compute_s = INITIAL_CPU_PER_COMPUTE_S
        self.memory_gb = 0.0
        self._compute_s = 0.0
        self._lock = threading.Lock()
        # (monotonic s, tree CPU s, all instances' compute s), oldest first.
        self._history: deque[tuple[float, float, float]] = deque(maxlen=64)
        self._measured_at = float("-inf")
        self._tree: list[int] = []
        self._tree_at = float("-inf")

    def record(self, compute_s: float, gpu_s: float = 0.0) -> tuple[float, float]:
        """Note ``compute_s`` of work (``gpu_s`` of it on a GPU); return (CPU s, cost in USD)."""
        with self._lock:
            self._compute_s += compute_s
        cpu_s = compute_s * self.cpu_per_compute_s
        return cpu_s, self.prices.cost_usd(cpu_s, gpu_s, self.memory_gb, compute_s)

    def update(self, now: float | None = None) -> None:
        """Write this instance's ledger, re-measure the rate from /proc and every ledger.

        At most every MEASURE_EVERY_S (``now``: monotonic seconds, for tests).
        """
        now = time.monotonic() if now is None else now
        if now - self._measured_at < MEASURE_EVERY_S:
            return
        self._measured_at = now
        with self._lock:
            mine = self._compute_s
        tmp = self.ledger.with_suffix(".tmp")
        tmp.write_text(repr(mine))
        tmp.replace(self.ledger)
        total = 0.0
        for path in self.ledger_dir.glob("*"):
            if path.suffix == ".tmp":
                continue
            try:
                total += float(path.read_text())
            except (OSError, ValueError):
                continue
        if now - self._tree_at >= TREE_REFRESH_S:
            self._tree, self._tree_at = tree_pids(self.server_pid), now
        cpu, self.memory_gb, complete = usage_of(self._tree)
        if not complete:
            self._tree_at = float("-inf")  # a process is gone: walk the tree next time
        if self._history and cpu < self._history[-1][1]:
            self._history.clear()  # a process of the tree exited (e.g. an unloaded model)
        self._history.append((now, cpu, total))
        while len(self._history) > 2 and now - self._history[1][0] >= RATE_WINDOW_S:
            self._history.popleft()  # keep the newest sample at least RATE_WINDOW_S old
        _, first_cpu, first_total = self._history[0]
        if total - first_total > 0.05:  # a rate from too little work is mostly idle noise
            self.cpu_per_compute_s = max(0.0, (cpu - first_cpu) / (total - first_total))


def started_meter(env: Mapping[str, str], instance: str) -> CostMeter:
    """Return the meter of a Python-backend model instance (its server: the stub's parent)."""
    return CostMeter(Prices.from_env(env), os.getppid(), instance)


def price_results(
    meter: CostMeter,
    parsed: Sequence[Any],
    results: list[Any],
    compute_s: float,
    gpu_s: float = 0.0,
) -> list[Any]:
    """Add each served request's estimated cost to its images' metadata (in place).

    The batch's ``compute_s`` (``gpu_s`` of it on a GPU instance; 0 on CPU instances) is split
    over its served images; each image's metadata JSON gains ``"cost": {"usd", "cpu_s",
    "gpu_s", "compute_s"}`` (its share), appended to the encoded string rather than
    re-encoded, to stay cheap on the request path.
    """
    served = [
        (request, outcome)
        for request, outcome in zip(parsed, results, strict=False)
        if isinstance(outcome, dict) and "metadata" in outcome
    ]
    images = sum(len(outcome["metadata"]) for _, outcome in served)
    if not images:
        return results
    cpu_s, usd = meter.record(compute_s, gpu_s)
    per_cpu, per_usd, per_compute = cpu_s / images, usd / images, compute_s / images
    tail = (
        f', "cost": {{"usd": {per_usd:.6g}, "cpu_s": {per_cpu:.6g}, '
        f'"gpu_s": {gpu_s / images:.6g}, "compute_s": {per_compute:.6g}}}}}'
    ).encode()
    for _, outcome in served:
        rows = outcome["metadata"]
        for row in rows:
            text = row[0]
            if isinstance(text, bytes) and text.endswith(b"}"):
                row[0] = text[:-1] + tail
    return results
