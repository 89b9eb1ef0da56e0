"""The runs the CLI offers: a sweep, the batching study, and the harness's own capacity.

Each run writes ``results.csv`` (perf_analyzer's column names), ``summary.json`` (settings, git
revision, machine, every row, the limits and ratios), ``summary.md`` (the tables) and PNG plots
into one results folder, and returns the Markdown summary for printing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlapi_bench import plots
from mlapi_bench.clients import Endpoint
from mlapi_bench.inprocess import InProcessResult
from mlapi_bench.limits import INPROCESS_COLUMNS, RATIO_COLUMNS, in_process_limits, ratios
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
from mlapi_bench.study import Variant, switching

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSettings:
    models: tuple[str, ...] = ("digits", "digits_classifier")
    protocols: tuple[str, ...] = ("grpc", "http")
    concurrency: tuple[int, ...] = (1, 4, 16)
    request_rates: tuple[float, ...] = ()
    phases: Phases = field(default_factory=Phases)
    processes: int = 1
    in_process_s: float = 0.5
    image_side: int = 8


def _specs(stack: Stack, s: SweepSettings, models: Sequence[str]) -> list[LoadSpec]:
    specs = []
    for model in models:
        for protocol in s.protocols:
            endpoint = Endpoint(protocol, stack.url(protocol))
            specs += [
                LoadSpec(endpoint, model, "concurrency", c, image_side=s.image_side)
                for c in s.concurrency
            ]
            specs += [
                LoadSpec(endpoint, model, "request_rate", r, image_side=s.image_side)
                for r in s.request_rates
            ]
    return specs


def _measure_all(
    runner: Runner, jobs: Sequence[tuple[LoadSpec, str]], bar: tqdm
) -> list[dict[str, Any]]:
    rows = []
    for spec, label in jobs:
        bar.set_description(
            f"{spec.model} {spec.endpoint.protocol} {label} {spec.mode}={spec.level:g}"
        )
        m = runner.measure(spec, label)
        rows.append(row(m))
        bar.set_postfix(infer_s=f"{m.client.throughput_per_s:.0f}", errors=m.client.errors)
        bar.update()
    return rows


def _finish(
    out: Path,
    kind: str,
    settings: Any,
    rows: list[dict[str, Any]],
    limits: list[InProcessResult],
    sections: list[str],
    extra: dict[str, Any],
) -> str:
    write_csv(out / "results.csv", rows)
    ratio_rows = ratios(rows, limits)
    closed = [r for r in rows if r["mode"] == "concurrency"]
    for suffix, subset in _plot_groups(closed):
        title = f"{kind}: {suffix[1:]}" if suffix else kind
        plots.latency_vs_throughput(subset, out / f"latency_vs_throughput{suffix}.png", title)
        plots.p99_vs_level(subset, out / f"p99_vs_concurrency{suffix}.png", title)
        plots.throughput_vs_level(subset, out / f"throughput_vs_concurrency{suffix}.png", title)
    opened = [r for r in rows if r["mode"] == "request_rate"]
    if opened:
        plots.p99_vs_level(opened, out / "p99_vs_request_rate.png", f"{kind}: p99 vs request rate")
    info = machine()
    header = (
        f"# {kind}\n\nMeasured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC at {git_revision(ROOT)} on "
        f"{info['cpu']} ({info['cpus_usable']} usable CPUs, {info['platform']}); the harness, the "
        "server and anything else running share those CPUs."
    )
    parts = [header, *sections, "## Served vs limits (same run)", table(ratio_rows, RATIO_COLUMNS)]
    if limits:
        parts += [
            "## In-process onnxruntime (the compute limit)",
            table([asdict(x) for x in limits], INPROCESS_COLUMNS),
        ]
    markdown = "\n\n".join(parts) + "\n"
    (out / "summary.md").write_text(markdown)
    write_json(
        out / "summary.json",
        clean(
            {
                "kind": kind,
                "git_revision": git_revision(ROOT),
                "machine": info,
                "settings": _settings_dict(settings),
                "rows": rows,
                "in_process": [asdict(x) for x in limits],
                "ratios": ratio_rows,
                **extra,
            }
        ),
    )
    return markdown


def _plot_groups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """All rows in one plot, or (many series, as in the study) one plot per model + the floor."""
    if not rows:
        return []
    series = {(r["model"], r["protocol"], r["label"]) for r in rows}
    if len(series) <= 10:
        return [("", list(rows))]
    floor = [r for r in rows if r["model"] == IDENTITY_MODEL]
    models = dict.fromkeys(r["model"] for r in rows if r["model"] != IDENTITY_MODEL)
    return [(f"_{m}", [r for r in rows if r["model"] == m] + floor) for m in models]


def _settings_dict(settings: Any) -> dict[str, Any]:
    return asdict(settings)


def run_sweep(stack: Stack, s: SweepSettings, out: Path) -> str:
    """Every model (and the identity floor) over every protocol and load level."""
    jobs = [(spec, "shipped") for spec in _specs(stack, s, [*s.models, IDENTITY_MODEL])]
    with Runner(s.phases, s.processes) as runner, tqdm(total=len(jobs), unit="point") as bar:
        rows = _measure_all(runner, jobs, bar)
    limits = in_process_limits(s.models, sorted({*s.concurrency, 1}), s.in_process_s)
    section = "## Sweep (shipped configs)\n\n" + table(rows, SWEEP_COLUMNS)
    return _finish(out, "sweep", s, rows, limits, [section], {})


@dataclass(frozen=True)
class StudySettings:
    models: tuple[str, ...] = ("digits_classifier", "digits")
    variants: tuple[Variant, ...] = ()
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    protocol: str = "grpc"
    phases: Phases = field(default_factory=Phases)
    processes: int = 1
    in_process_s: float = 0.5
    repeats: int = 1
    # Load another model than the one whose config is switched (e.g. the classifier's batching
    # as seen through the digits pipeline that calls it). Needs exactly one model.
    via: str = ""

    def __post_init__(self) -> None:
        if self.via and len(self.models) != 1:
            raise ValueError(
                f"via={self.via!r} needs exactly one model to switch, got {self.models}"
            )

    @property
    def measured_models(self) -> tuple[str, ...]:
        return (self.via,) if self.via else self.models


def run_study(stack: Stack, s: StudySettings, out: Path) -> str:
    """Each model under each batching variant, with the identity floor, on one server.

    With ``repeats`` > 1 the whole study runs that many rounds (so slow spells of a shared
    machine hit different variants) and each point keeps its best round: interference only
    ever slows a run down, so the best round is the estimate of what the setting can do.
    """
    endpoint = Endpoint(s.protocol, stack.url(s.protocol))
    total = s.repeats * len(s.concurrency) * (1 + len(s.models) * len(s.variants))
    measured: list[dict[str, Any]] = []
    with Runner(s.phases, s.processes) as runner, tqdm(total=total, unit="point") as bar:
        for _ in range(s.repeats):
            identity = [
                (LoadSpec(endpoint, IDENTITY_MODEL, "concurrency", c), "floor")
                for c in s.concurrency
            ]
            measured += _measure_all(runner, identity, bar)
            for model in s.models:
                with switching(stack.http_url, model) as switcher:
                    for variant in s.variants:
                        switcher.use(variant)
                        jobs = [
                            (LoadSpec(endpoint, s.via or model, "concurrency", c), variant.label)
                            for c in s.concurrency
                        ]
                        measured += _measure_all(runner, jobs, bar)
    rows = best_rounds(measured)
    limits = in_process_limits(s.measured_models, s.concurrency, s.in_process_s)
    sections, gains = study_sections(rows, s)
    command = "python -m mlapi_bench study" + (
        f" --models {s.models[0]} --via {s.via}" if s.via else ""
    )
    sections.append(
        "## Queue delay (one instance)\n\n"
        + queue_delay_markdown(rows, s.measured_models, s.concurrency, s.protocol, command)
    )
    return _finish(
        out, "batching study", s, rows, limits, sections, {"gains": gains, "all_rounds": measured}
    )


def best_rounds(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, protocol, label, mode, level): the round with the highest throughput."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        key = (r["model"], r["protocol"], r["label"], r["mode"], r["level"])
        if key not in best or r["throughput_per_s"] > best[key]["throughput_per_s"]:
            best[key] = r
    return list(best.values())


def study_sections(
    rows: Sequence[dict[str, Any]], s: StudySettings
) -> tuple[list[str], list[dict[str, Any]]]:
    """Per model: throughput and p99 of every variant at each concurrency, and the gain table."""
    sections = []
    gains = []
    switched = f" ({s.models[0]}'s config switched)" if s.via else ""
    for model in s.measured_models:
        mine = [r for r in rows if r["model"] == model]
        by_label: dict[str, dict[float, dict[str, Any]]] = {}
        for r in mine:
            by_label.setdefault(r["label"], {})[r["level"]] = r
        cols = [("label", "config")]
        table_rows = []
        for label, levels in by_label.items():
            entry: dict[str, Any] = {"label": label}
            for c in s.concurrency:
                point = levels.get(c)
                entry[f"t{c}"] = point["throughput_per_s"] if point else float("nan")
                entry[f"p{c}"] = point["p99_us"] / 1e3 if point else float("nan")
                entry[f"b{c}"] = point["server_avg_batch_size"] if point else float("nan")
            table_rows.append(entry)
        for c in s.concurrency:
            cols += [(f"t{c}", f"c{c} infer/s"), (f"p{c}", f"c{c} p99 ms")]
        off = by_label.get(Variant(None).label, {})
        for c in s.concurrency:
            on = [
                (levels[c], label)
                for label, levels in by_label.items()
                if c in levels and not label.startswith("batching off")
            ]
            if not on or c not in off:
                continue
            best, label = max(on, key=lambda x: x[0]["throughput_per_s"])
            gains.append(
                {
                    "model": model,
                    "concurrency": c,
                    "best": label,
                    "on_per_s": best["throughput_per_s"],
                    "off_per_s": off[c]["throughput_per_s"],
                    "gain": best["throughput_per_s"] / off[c]["throughput_per_s"]
                    if off[c]["throughput_per_s"]
                    else float("nan"),
                    "on_p99_ms": best["p99_us"] / 1e3,
                    "off_p99_ms": off[c]["p99_us"] / 1e3,
                    "on_batch": best["server_avg_batch_size"],
                }
            )
        sections.append(
            f"## {model}{switched}: throughput and p99 by config ({s.protocol})\n\n"
            + table(table_rows, cols)
        )
    gain_cols = (
        ("model", "model"),
        ("concurrency", "concurrency"),
        ("best", "best batching config"),
        ("on_per_s", "on infer/s"),
        ("off_per_s", "off infer/s"),
        ("gain", "gain on/off"),
        ("on_p99_ms", "on p99 ms"),
        ("off_p99_ms", "off p99 ms"),
        ("on_batch", "avg batch"),
    )
    sections.append("## Batching gain (best variant vs off)\n\n" + table(gains, gain_cols))
    return sections, gains


def queue_delay_markdown(
    rows: Sequence[dict[str, Any]],
    models: Sequence[str],
    levels: Sequence[int],
    protocol: str,
    command: str,
) -> str:
    """The queue-delay comparison (batching off, then each delay, one instance) as Markdown."""
    delays = [
        label
        for label in dict.fromkeys(r["label"] for r in rows)
        if label.endswith(" x1") and " pref " not in label
    ]
    parts = []
    for model in models:
        cells = {(r["label"], r["level"]): r for r in rows if r["model"] == model}
        cols = [("label", "config")]
        for c in levels:
            cols += [
                (f"t{c}", f"c{c} infer/s"),
                (f"p{c}", f"c{c} p99 ms"),
                (f"b{c}", f"c{c} batch"),
            ]
        body = []
        for label in delays:
            entry: dict[str, Any] = {"label": label}
            for c in levels:
                r = cells.get((label, c))
                entry[f"t{c}"] = r["throughput_per_s"] if r else float("nan")
                entry[f"p{c}"] = r["p99_us"] / 1e3 if r else float("nan")
                entry[f"b{c}"] = r["server_avg_batch_size"] if r else float("nan")
            body.append(entry)
        parts.append(f"### {model} ({protocol}, closed loop)\n\n" + table(body, cols))
    return "\n\n".join(parts) + f"\n\nReproduce: `{command}`\n"
