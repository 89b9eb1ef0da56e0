"""perf_analyzer sweeps of the public models, and the harness measured beside it in one run.

perf_analyzer (NVIDIA's C++ load generator) ships in the ``tritonclient`` wheel the project
installs (``.venv/bin/perf_analyzer``). It needs Debian's ``libb64-0d`` and ``libcudart.so.12``,
which the PyPI wheel ``nvidia-cuda-runtime-cu12`` provides: `make perf-analyzer` installs both,
and this module puts the wheel's library folder on ``LD_LIBRARY_PATH`` for each run. Every run
writes perf_analyzer's own CSV (``-f``); the merged rows go to ``results.csv`` with the
harness's columns, plus a summary and PNG plots. With ``compare``, the project's harness
(``mlapi_bench``, through AsyncClient) measures the same model, protocol and concurrency
between the perf_analyzer runs, and the summary gives both throughputs and their ratio.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlapi_bench import plots
from mlapi_bench.clients import Endpoint
from mlapi_bench.load import LoadSpec
from mlapi_bench.measure import Phases, Runner
from mlapi_bench.payloads import PAYLOAD_VERSIONS
from mlapi_bench.perf_analyzer import INPUT_DIR, STREAMING_MODELS, key_header
from mlapi_bench.report import git_revision, machine, row, table, write_json
from mlapi_bench.stack import ROOT, Stack

# perf_analyzer's columns kept in the summary, and how they read there.
COLUMNS = (
    ("model", "model"),
    ("protocol", "proto"),
    ("level", "concurrency"),
    ("throughput_per_s", "infer/s"),
    ("p50 latency", "p50 us"),
    ("p99 latency", "p99 us"),
    ("Server Queue", "queue us"),
    ("Server Compute Infer", "infer us"),
)
COMPARE_COLUMNS = (
    ("model", "model"),
    ("protocol", "proto"),
    ("level", "concurrency"),
    ("perf_analyzer", "perf_analyzer infer/s"),
    ("harness", "harness infer/s"),
    ("ratio", "harness / perf_analyzer"),
)
AGREEMENT = 0.15  # the harness within 15% of perf_analyzer on the same point


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, cannot start, or a run failed."""


@dataclass(frozen=True)
class PerfAnalyzerSettings:
    models: tuple[str, ...] = ("digits", "digits_classifier")
    streaming_models: tuple[str, ...] = STREAMING_MODELS
    protocols: tuple[str, ...] = ("grpc", "http")
    concurrency: tuple[int, ...] = (1, 4, 16)
    measurement_ms: int = 2000
    compare: bool = False
    phases: Phases = field(default_factory=Phases)


def binary() -> Path:
    """perf_analyzer: on PATH, else beside this interpreter (the venv's, from tritonclient)."""
    found = shutil.which("perf_analyzer") or str(Path(sys.executable).with_name("perf_analyzer"))
    if not Path(found).is_file():
        raise PerfAnalyzerError(
            "perf_analyzer not found: it comes with the tritonclient wheel (`make install`)"
        )
    return Path(found)


def environment() -> dict[str, str]:
    """The environment of a run: the CUDA runtime wheel's libraries on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    if spec is not None and spec.submodule_search_locations:
        lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p
        )
    return env


def check() -> Path:
    """The binary, once it is known to start; a clear error naming what is missing."""
    path = binary()
    done = subprocess.run(
        [str(path), "--version"], env=environment(), capture_output=True, text=True, timeout=30
    )
    missing = "error while loading shared libraries" in done.stderr
    if missing:
        hint = {
            "libb64": "Debian's libb64-0d (`make system-deps`)",
            "libcudart": "the PyPI wheel nvidia-cuda-runtime-cu12 (`make install`)",
        }
        needed = [text for name, text in hint.items() if name in done.stderr]
        raise PerfAnalyzerError(
            f"perf_analyzer cannot start: {done.stderr.strip()}; install "
            + (" and ".join(needed) or "its libraries")
        )
    return path


def command(
    model: str,
    protocol: str,
    url: str,
    level: int,
    measurement_ms: int,
    csv_path: Path,
    streaming: bool = False,
) -> list[str]:
    """One perf_analyzer run: ``model`` over ``protocol`` at one concurrency, CSV to ``csv_path``."""
    return [
        str(binary()), "-m", model, "-i", protocol, "-u", url,
        "--input-data", str(INPUT_DIR / f"{model}.json"),
        "--concurrency-range", f"{level}:{level}",
        "--measurement-interval", str(measurement_ms),
        # perf_analyzer reports the mean of three consecutive windows within this many percent
        # of each other, else fails the run. A shared 2-CPU machine missed even 25% within 6
        # windows, so any three windows are accepted (their mean is reported; the spread shows
        # in p99); a run takes 3 to 10 windows.
        "--stability-percentage", "100", "--max-trials", "10",
        "--percentile", "99", "-f", str(csv_path),
        *key_header(protocol), *(["--streaming"] if streaming else []),
        *(["-x", PAYLOAD_VERSIONS[model]] if model in PAYLOAD_VERSIONS else []),
    ]  # fmt: skip


def measure(
    model: str,
    protocol: str,
    url: str,
    level: int,
    measurement_ms: int,
    out: Path,
    streaming: bool = False,
) -> dict[str, Any]:
    """Run perf_analyzer once and return its CSV row with the harness's short aliases."""
    csv_path = out / f"perf_analyzer_{model}_{protocol}_c{level}.csv"
    done = subprocess.run(
        command(model, protocol, url, level, measurement_ms, csv_path, streaming),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120 + 20 * measurement_ms / 1000,
    )
    if done.returncode != 0 or not csv_path.is_file():
        raise PerfAnalyzerError(
            f"perf_analyzer {model} {protocol} c{level} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-800:]}"
        )
    with csv_path.open() as handle:
        record = next(csv.DictReader(handle))
    values: dict[str, Any] = {k: float(v) for k, v in record.items() if v not in ("", None)}
    values.update(
        model=model,
        protocol=protocol,
        label="perf_analyzer",
        mode="concurrency",
        level=level,
        throughput_per_s=values["Inferences/Second"],
        p99_us=values["p99 latency"],
        csv=csv_path.name,
    )
    return values


def run(stack: Stack, s: PerfAnalyzerSettings, out: Path) -> str:
    """Every model x protocol x concurrency with perf_analyzer (and the harness beside it)."""
    check()
    points = [(m, p, c, False) for m in s.models for p in s.protocols for c in s.concurrency]
    points += [(m, "grpc", c, True) for m in s.streaming_models for c in s.concurrency]
    rows: list[dict[str, Any]] = []
    harness: list[dict[str, Any]] = []
    steps = len(points) * (2 if s.compare else 1)
    with tqdm(total=steps, unit="run") as bar, Runner(s.phases, 1) as runner:
        for model, protocol, level, streaming in points:
            bar.set_description(f"perf_analyzer {model} {protocol} c{level}")
            rows.append(
                measure(
                    model, protocol, stack.url(protocol), level, s.measurement_ms, out, streaming
                )
            )
            bar.update()
            if s.compare and not streaming:
                bar.set_description(f"harness {model} {protocol} c{level}")
                spec = LoadSpec(
                    Endpoint(protocol, stack.url(protocol)), model, "concurrency", level
                )
                harness.append(row(runner.measure(spec, "harness")))
                bar.update()
    return _finish(out, s, rows, harness)


def agreement(
    rows: Sequence[dict[str, Any]], harness: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """perf_analyzer's and the harness's throughput on each point both measured."""
    theirs = {(r["model"], r["protocol"], r["level"]): r for r in rows}
    found = []
    for ours in harness:
        key = (ours["model"], ours["protocol"], ours["level"])
        if key in theirs and theirs[key]["throughput_per_s"] > 0:
            pa = theirs[key]["throughput_per_s"]
            found.append({"model": key[0], "protocol": key[1], "level": key[2],
                          "perf_analyzer": pa, "harness": ours["throughput_per_s"],
                          "ratio": ours["throughput_per_s"] / pa})  # fmt: skip
    return found


def _finish(
    out: Path,
    s: PerfAnalyzerSettings,
    rows: list[dict[str, Any]],
    harness: list[dict[str, Any]],
) -> str:
    with (out / "results.csv").open("w", newline="") as handle:
        names = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    unary = [r for r in rows if r["model"] not in s.streaming_models]
    if unary:
        plots.latency_vs_throughput(unary, out / "latency_vs_throughput.png", "perf_analyzer")
        plots.throughput_vs_level(unary, out / "throughput_vs_concurrency.png", "perf_analyzer")
    streams = [r for r in rows if r["model"] in s.streaming_models]
    if streams:
        plots.p99_vs_level(
            streams, out / "streaming_p99_vs_concurrency.png", "perf_analyzer, streaming"
        )
    compared = agreement(rows, harness)
    info = machine()
    parts = [
        f"# perf_analyzer\n\nMeasured at {git_revision(ROOT)} on {info['cpu']} "
        f"({info['cpus_usable']} usable CPUs); perf_analyzer, the server and anything else "
        "running share those CPUs.",
        table(rows, COLUMNS),
    ]
    if compared:
        within = sum(abs(c["ratio"] - 1) <= AGREEMENT for c in compared)
        parts += [
            f"## The harness beside perf_analyzer (same run)\n\n{within} of {len(compared)} "
            f"points within {AGREEMENT:.0%}.",
            table(compared, COMPARE_COLUMNS),
        ]
    markdown = "\n\n".join(parts) + "\n"
    (out / "summary.md").write_text(markdown)
    write_json(
        out / "summary.json",
        {"kind": "perf_analyzer", "git_revision": git_revision(ROOT), "machine": info,
         "settings": {"models": s.models, "streaming_models": s.streaming_models,
                      "protocols": s.protocols, "concurrency": s.concurrency,
                      "measurement_ms": s.measurement_ms, "compare": s.compare},
         "rows": rows, "harness": harness, "agreement": compared},
    )  # fmt: skip
    return markdown
