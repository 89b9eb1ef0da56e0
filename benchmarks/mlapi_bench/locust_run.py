"""Run the locust scenarios headless for a fixed duration and summarise locust's CSV.

Expected 4xx (the deliberate bad requests, named "expected 4xx: ...") are reported apart from
failures (unexpected answers), so a healthy run shows bad requests answered and zero failures.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlapi_bench.report import table
from mlapi_bench.stack import ROOT

LOCUSTFILE = ROOT / "benchmarks" / "locust" / "locustfile.py"
EXPECTED_PREFIX = "expected 4xx:"


@dataclass(frozen=True)
class LocustSettings:
    users: int = 16
    spawn_rate: int = 8
    duration_s: int = 30
    gateway_url: str = ""  # also drive the gateway (its base URL, e.g. http://127.0.0.1:8080)
    gateway_key: str = ""


@dataclass(frozen=True)
class LocustSummary:
    requests: int
    failures: int
    expected_4xx: int
    rows: list[dict[str, Any]]
    exceptions: int = 0  # errors raised inside the scenario code itself (locust_exceptions.csv)


def command(host: str, s: LocustSettings, csv_prefix: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "-u",
        str(s.users),
        "-r",
        str(s.spawn_rate),
        "-t",
        f"{s.duration_s}s",
        "--host",
        host,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "1",
    ]


def _ms(cell: str) -> float:
    """A percentile cell: locust writes "N/A" (or nothing) for a name with no requests."""
    return float(cell) if cell and cell != "N/A" else float("nan")


def summarise(stats_csv: Path) -> LocustSummary:
    """Totals from locust's ``*_stats.csv`` (one row per request name, plus "Aggregated")."""
    rows: list[dict[str, Any]] = []
    with stats_csv.open() as handle:
        for line in csv.DictReader(handle):
            if line["Name"] == "Aggregated":
                continue
            rows.append(
                {
                    "name": line["Name"],
                    "requests": int(line["Request Count"]),
                    "failures": int(line["Failure Count"]),
                    "rps": float(line["Requests/s"]),
                    "p50_ms": _ms(line["50%"]),
                    "p99_ms": _ms(line["99%"]),
                }
            )
    return LocustSummary(
        requests=sum(r["requests"] for r in rows),
        failures=sum(r["failures"] for r in rows),
        expected_4xx=sum(
            r["requests"] - r["failures"] for r in rows if r["name"].startswith(EXPECTED_PREFIX)
        ),
        rows=rows,
    )


def problems(summary: LocustSummary, exit_status: int) -> list[str]:
    """Why a run failed (empty when it passed): a load run that made no request is a failure."""
    found = []
    if summary.requests == 0:
        found.append("locust made no request (users never started, or the run was too short)")
    if summary.failures:
        found.append(f"{summary.failures} failures (unexpected answers)")
    if summary.exceptions:
        found.append(f"{summary.exceptions} exceptions in the scenario code")
    if exit_status:
        found.append(f"locust exited with status {exit_status}")
    return found


def run_locust(http_url: str, s: LocustSettings, out: Path) -> tuple[str, LocustSummary, int]:
    """Run locust against ``http_url``; return the Markdown summary, the totals, its exit status."""
    prefix = out / "locust"
    for stale in out.glob(f"{prefix.name}_*.csv"):  # report only what this run wrote
        stale.unlink()
    env = dict(os.environ)
    env.pop("MLAPI_GATEWAY_URL", None)
    if s.gateway_url:
        env["MLAPI_GATEWAY_URL"] = s.gateway_url
        env["MLAPI_GATEWAY_KEY"] = s.gateway_key
    # The locustfile imports mlapi_bench (installed editable, so it is on the path already).
    done = subprocess.run(
        command(f"http://{http_url}", s, prefix),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=s.duration_s + 120,
        check=False,
    )
    (out / "locust.log").write_text(done.stdout + done.stderr)
    stats = prefix.parent / f"{prefix.name}_stats.csv"
    if not stats.is_file():
        raise RuntimeError(
            f"locust wrote no statistics (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    summary = summarise(stats)
    exceptions_csv = prefix.parent / f"{prefix.name}_exceptions.csv"
    if exceptions_csv.is_file():
        with exceptions_csv.open() as handle:
            raised = sum(int(line["Count"]) for line in csv.DictReader(handle))
        summary = replace(summary, exceptions=raised)
    columns = (
        ("name", "request"),
        ("requests", "requests"),
        ("failures", "failures"),
        ("rps", "req/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
    )
    targets = "Triton HTTP and the gateway" if s.gateway_url else "Triton HTTP"
    markdown = (
        f"# locust: {s.users} users, {s.duration_s} s, {targets}\n\n{table(summary.rows, columns)}\n\n"
        f"requests {summary.requests}; bad requests answered with the expected 4xx {summary.expected_4xx}; "
        f"failures (unexpected answers) {summary.failures}; scenario exceptions {summary.exceptions}; "
        f"locust exit status {done.returncode}\n"
    )
    for problem in problems(summary, done.returncode):
        markdown += f"\nFAILED: {problem}\n"
    (out / "summary.md").write_text(markdown)
    return markdown, summary, done.returncode
