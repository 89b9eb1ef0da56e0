"""How many requests per second the harness itself can drive (against ``bench_identity``).

The identity model does no work, so the rate a client reaches against it is bounded by the
client, the transport and Triton's per-request cost on this machine. The harness is run with 1,
2, ... processes; where adding processes raises the rate, one process was the bottleneck.
``wrk`` (C, one thread) gives an independent HTTP figure when it is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlapi_bench.clients import PROTOCOLS, Endpoint
from mlapi_bench.load import LoadSpec
from mlapi_bench.measure import Phases, Runner
from mlapi_bench.payloads import IDENTITY_MODEL
from mlapi_bench.report import (
    SWEEP_COLUMNS,
    clean,
    git_revision,
    machine,
    row,
    table,
    write_csv,
    write_json,
)
from mlapi_bench.stack import ROOT, Stack

WRK_SCRIPT = ROOT / "benchmarks" / "wrk" / "identity.lua"


@dataclass(frozen=True)
class CapacitySettings:
    concurrency: int = 64
    max_processes: int = 2
    phases: Phases = field(default_factory=Phases)
    wrk: bool = False


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    non_2xx: int
    socket_errors: int
    p50_us: float
    p99_us: float


_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


def parse_wrk(output: str) -> WrkResult:
    """The figures of ``wrk --latency`` output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise ValueError("no 'Requests/sec' in wrk output")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )

    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        return float(match.group(1)) * _UNITS_US[match.group(2)] if match else float("nan")

    return WrkResult(
        requests_per_s=float(rate.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(x) for x in sockets.groups()) if sockets else 0,
        p50_us=latency("50"),
        p99_us=latency("99"),
    )


def run_wrk(http_url: str, concurrency: int, duration_s: float, threads: int = 1) -> WrkResult:
    binary = shutil.which("wrk")
    if binary is None:
        raise FileNotFoundError("wrk is not installed (`make bench-tools` installs Debian's wrk)")
    command = [
        binary,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "-s",
        str(WRK_SCRIPT),
        f"http://{http_url}",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=duration_s + 30
    )
    return parse_wrk(done.stdout)


def run_capacity(stack: Stack, s: CapacitySettings, out: Path) -> str:
    rows: list[dict[str, Any]] = []
    counts = sorted({1, *range(2, s.max_processes + 1)})
    with tqdm(total=len(counts) * len(PROTOCOLS), unit="point") as bar:
        for processes in counts:
            with Runner(s.phases, processes) as runner:
                for protocol in PROTOCOLS:
                    spec = LoadSpec(
                        Endpoint(protocol, stack.url(protocol)),
                        IDENTITY_MODEL,
                        "concurrency",
                        s.concurrency,
                    )
                    bar.set_description(f"{protocol} x{processes} processes")
                    rows.append(row(runner.measure(spec, f"{processes} process(es)")))
                    bar.update()
    wrk: WrkResult | None = None
    if s.wrk:
        # Warm up, then measure.
        run_wrk(stack.http_url, s.concurrency, 1.0)
        wrk = run_wrk(stack.http_url, s.concurrency, s.phases.window_s)
    write_csv(out / "results.csv", rows)
    best = {
        p: max((r["throughput_per_s"] for r in rows if r["protocol"] == p), default=0.0)
        for p in PROTOCOLS
    }
    lines = [
        f"# harness capacity against {IDENTITY_MODEL}",
        f"Measured at {git_revision(ROOT)} on {machine()['cpu']} ({machine()['cpus_usable']} usable CPUs); "
        "server and harness share them.",
        table(rows, SWEEP_COLUMNS),
        "Best harness rate: " + ", ".join(f"{p} {v:.0f} req/s" for p, v in best.items()),
    ]
    if wrk is not None:
        lines.append(
            f"wrk (1 thread, {s.concurrency} connections, HTTP): {wrk.requests_per_s:.0f} req/s, "
            f"p50 {wrk.p50_us:.0f} us, p99 {wrk.p99_us:.0f} us, non-2xx {wrk.non_2xx}, socket errors {wrk.socket_errors}"
        )
    markdown = "\n\n".join(lines) + "\n"
    (out / "summary.md").write_text(markdown)
    write_json(
        out / "summary.json",
        clean(
            {
                "kind": "capacity",
                "git_revision": git_revision(ROOT),
                "machine": machine(),
                "rows": rows,
                "best_per_s": best,
                "wrk": wrk.__dict__ if wrk else None,
            }
        ),
    )
    return markdown
