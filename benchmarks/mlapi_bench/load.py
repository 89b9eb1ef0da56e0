"""Load generators: closed-loop (fixed concurrency) and open-loop (fixed request rate).

Requests go through the project's client (``mlapi_bench.clients.open_client``). Both run on
asyncio in one process, or in several processes when one cannot keep up; every
process follows the same schedule on the shared monotonic clock (CLOCK_MONOTONIC is
system-wide on Linux), so their records merge into one window without any coordination.

Closed loop: ``level`` workers each send a request, wait for its reply, and send the next.
Open loop: requests are released at ``level`` per second on a fixed grid whether or not earlier
ones have returned; latency is measured from the *scheduled* send time, so a late client shows
up as latency instead of hiding it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mlapi_bench.clients import Endpoint, error_kind, open_client
from mlapi_bench.payloads import PAYLOAD_MODELS, payload_version, payloads
from mlapi_bench.stats import OK, Records
from mlapi_client import AsyncClient

MODES = ("concurrency", "request_rate")
# Open loop: requests beyond this many in flight (per process) are not sent and are counted as
# errors of kind "client_overload": the server (or the harness) cannot keep up with the rate.
MAX_IN_FLIGHT = 2048

Payload = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class LoadSpec:
    """One load level against one model over one protocol. Picklable (sent to worker processes)."""

    endpoint: Endpoint
    model: str
    mode: str
    level: float  # concurrency (workers) or request rate (requests per second)
    version: str = ""
    image_side: int = 8
    # > 0: every request carries the request parameter routing_key, cycling over this many keys
    # (sticky routing in `digits`); 0: no parameters.
    routing_keys: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.level <= 0:
            raise ValueError(f"load level must be positive, got {self.level}")
        if self.routing_keys < 0:
            raise ValueError(f"routing_keys must be >= 0, got {self.routing_keys}")

    def parameters(self, n: int) -> dict[str, str] | None:
        """Request parameters of the ``n``-th request a worker sends."""
        return {"routing_key": f"key-{n % self.routing_keys}"} if self.routing_keys else None

    def shares(self, processes: int) -> list[LoadSpec]:
        """Split the load over ``processes``: concurrency by workers, rate by requests per second."""
        if self.mode == "concurrency":
            workers = int(self.level)
            counts = [workers // processes + (i < workers % processes) for i in range(processes)]
            return [replace(self, level=c) for c in counts if c > 0]
        return [replace(self, level=self.level / processes) for _ in range(processes)]


async def sleep_until(deadline_s: float) -> None:
    delay = deadline_s - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def drive(spec: LoadSpec, begin_s: float, end_s: float, offset_s: float = 0.0) -> Records:
    """Send ``spec``'s load from ``begin_s`` until ``end_s``; wait for what is in flight."""
    client = open_client(spec.endpoint)
    try:
        requests: list[Payload] = list(payloads(spec.model, image_side=spec.image_side))
        records = Records()
        await sleep_until(begin_s)
        if spec.mode == "concurrency":
            await asyncio.gather(
                *(
                    _closed_loop(client, spec, _rotated(requests, i), end_s, records)
                    for i in range(int(spec.level))
                )
            )
        else:
            await _open_loop(client, spec, requests, begin_s + offset_s, end_s, records)
        return records
    finally:
        await client.close()


def _rotated(items: list[Payload], start: int) -> list[Payload]:
    """``items`` starting at ``start`` (mod length), so that workers send different payloads."""
    start %= len(items)
    return items[start:] + items[:start]


async def _one(
    client: AsyncClient, spec: LoadSpec, inputs: Payload, n: int, start_s: float, records: Records
) -> None:
    try:
        version = payload_version(spec.model, spec.version)
        await client.infer(spec.model, inputs, version, parameters=spec.parameters(n))
        outcome = OK
    except Exception as exc:  # every failure is counted, by kind, never hidden
        outcome = error_kind(exc)
    records.add(start_s, time.monotonic(), outcome)


async def _closed_loop(
    client: AsyncClient, spec: LoadSpec, requests: Sequence[Payload], end_s: float, records: Records
) -> None:
    for n, inputs in enumerate(itertools.cycle(requests)):
        start_s = time.monotonic()
        if start_s >= end_s:
            return
        await _one(client, spec, inputs, n, start_s, records)


async def _open_loop(
    client: AsyncClient,
    spec: LoadSpec,
    requests: Sequence[Payload],
    first_s: float,
    end_s: float,
    records: Records,
) -> None:
    interval_s = 1.0 / spec.level
    in_flight: set[asyncio.Task[None]] = set()
    for n, inputs in enumerate(itertools.cycle(requests)):
        scheduled_s = first_s + n * interval_s
        if scheduled_s >= end_s:
            break
        await sleep_until(scheduled_s)
        if len(in_flight) >= MAX_IN_FLIGHT:
            records.add(scheduled_s, time.monotonic(), "client_overload")
            continue
        task = asyncio.create_task(_one(client, spec, inputs, n, scheduled_s, records))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)


def drive_in_process(spec: LoadSpec, begin_s: float, end_s: float, offset_s: float) -> Records:
    """Entry point of a worker process (top-level so that it pickles)."""
    return asyncio.run(drive(spec, begin_s, end_s, offset_s))


def warm_process() -> None:
    """Import the client stack and build every model's payloads before any schedule starts.

    The digits payloads import scikit-learn and load its dataset: seconds on a busy machine,
    which must not be spent inside a warm-up or a measurement window.
    """
    for model in PAYLOAD_MODELS:
        payloads(model)


async def prime(spec: LoadSpec) -> None:
    """Build ``spec``'s payloads here and send one request, waiting for its answer.

    Called before a schedule is fixed, so that imports, payload building, the first connection
    and a cold model instance all fall before the warm-up instead of eating it. The answer may
    be an error (a load of bad requests is measured too): only its arrival matters.
    """
    client = open_client(spec.endpoint)
    try:
        inputs = payloads(spec.model, image_side=spec.image_side)[0]
        await _one(client, spec, inputs, 0, time.monotonic(), Records())
    finally:
        await client.close()
