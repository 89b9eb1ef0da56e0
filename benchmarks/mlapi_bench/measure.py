"""One measurement: warm up, open a fixed window, read the server's counters around it.

The load runs in this process (one asyncio loop) or in a pool of worker processes; meanwhile
this process snapshots Triton's statistics at the window's two edges, so client latencies and
server queue/compute times describe the same seconds.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from mlapi_bench.clients import open_client
from mlapi_bench.load import (
    LoadSpec,
    drive,
    drive_in_process,
    prime,
    sleep_until,
    warm_process,
)
from mlapi_bench.server_stats import ServerCounters, ServerWindow
from mlapi_bench.stats import Records, WindowStats, window_stats

# Time between scheduling a measurement and its first request: lets workers connect first.
START_DELAY_S = 0.3


class MeasurementError(RuntimeError):
    """A window that cannot describe a steady load (e.g. no answer came during the warm-up)."""


@dataclass(frozen=True)
class Phases:
    warmup_s: float = 1.0
    window_s: float = 3.0

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.window_s <= 0:
            raise ValueError(f"need warmup_s >= 0 and window_s > 0, got {self}")


@dataclass(frozen=True)
class Measurement:
    """A row of the results: what was asked, what the client saw, what the server did."""

    spec: LoadSpec
    label: str  # e.g. the server configuration under test
    processes: int
    client: WindowStats
    server: ServerWindow

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.spec.model,
            "protocol": self.spec.endpoint.protocol,
            "mode": self.spec.mode,
            "level": self.spec.level,
            "label": self.label,
            "processes": self.processes,
            "client": asdict(self.client),
            "server": asdict(self.server),
        }


class Runner:
    """Runs measurements, owning the worker processes (reused across a whole sweep)."""

    def __init__(self, phases: Phases, processes: int = 1) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.phases = phases
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Runner:
        if self.processes > 1:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.processes, mp_context=context)
            for future in [self._pool.submit(warm_process) for _ in range(self.processes)]:
                future.result()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def measure(self, spec: LoadSpec, label: str = "") -> Measurement:
        return asyncio.run(self.measure_async(spec, label))

    async def measure_async(self, spec: LoadSpec, label: str = "") -> Measurement:
        """Prime, then warm up and measure one window on a schedule fixed after the priming."""
        await prime(spec)
        observer = open_client(spec.endpoint)
        try:
            await observer.inference_statistics(spec.model)  # connected before the edges
            begin_s = time.monotonic() + START_DELAY_S * (2 if self._pool else 1)
            t0_s = begin_s + self.phases.warmup_s
            t1_s = t0_s + self.phases.window_s
            load = asyncio.ensure_future(self._load(spec, begin_s, t1_s))
            await sleep_until(t0_s)
            before = ServerCounters.parse(
                await observer.inference_statistics(spec.model), spec.model
            )
            await sleep_until(t1_s)
            after = ServerCounters.parse(
                await observer.inference_statistics(spec.model), spec.model
            )
            records = await load
        finally:
            await observer.close()
        warmed = [end for end in records.end_s if end < t0_s]
        if self.phases.warmup_s > 0 and not warmed:
            first = f"{min(records.end_s) - begin_s:.2f} s" if records.end_s else "never"
            raise MeasurementError(
                f"{spec.model} ({spec.endpoint.protocol}, {spec.mode} {spec.level}): no answer "
                f"during the {self.phases.warmup_s} s warm-up (first answer after the start: "
                f"{first}); the window would measure a cold start: lengthen --warmup-s"
            )
        return Measurement(
            spec=spec,
            label=label,
            processes=self.processes,
            client=window_stats(records, t0_s, t1_s),
            server=ServerWindow.between(before, after),
        )

    async def _load(self, spec: LoadSpec, begin_s: float, end_s: float) -> Records:
        if self._pool is None:
            return await drive(spec, begin_s, end_s)
        loop = asyncio.get_running_loop()
        shares = spec.shares(self.processes)
        futures = [
            loop.run_in_executor(
                self._pool, drive_in_process, share, begin_s, end_s, i / max(spec.level, 1e-9)
            )
            for i, share in enumerate(shares)
        ]
        return Records.merge(await asyncio.gather(*futures))
