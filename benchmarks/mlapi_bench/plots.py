"""PNG plots of a run (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _series(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        name = f"{r['model']} {r['protocol']}" + (f" {r['label']}" if r.get("label") else "")
        grouped[name].append(r)
    return {k: sorted(v, key=lambda r: r["level"]) for k, v in grouped.items()}


def latency_vs_throughput(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """p50 (dashed) and p99 (solid) latency against throughput, one line per series."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, series in _series(rows).items():
        x = [r["throughput_per_s"] for r in series]
        (line,) = ax.plot(x, [r["p99_us"] / 1e3 for r in series], marker="o", label=f"{name} p99")
        ax.plot(
            x, [r["p50 latency"] / 1e3 for r in series], ls="--", color=line.get_color(), alpha=0.6
        )
    ax.set(
        xlabel="throughput (inferences/s)",
        ylabel="latency (ms): p99 solid, p50 dashed",
        title=title,
    )
    ax.set_yscale("log")
    return _save(fig, ax, path)


def p99_vs_level(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """p99 latency against the load level (concurrency or request rate), one line per series."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, series in _series(rows).items():
        ax.plot(
            [r["level"] for r in series],
            [r["p99_us"] / 1e3 for r in series],
            marker="o",
            label=name,
        )
    mode = rows[0]["mode"] if rows else "concurrency"
    ax.set(
        xlabel="concurrency" if mode == "concurrency" else "request rate (req/s)",
        ylabel="p99 latency (ms)",
        title=title,
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    return _save(fig, ax, path)


def throughput_vs_level(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Throughput against concurrency: the batching study's main picture."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, series in _series(rows).items():
        ax.plot(
            [r["level"] for r in series],
            [r["throughput_per_s"] for r in series],
            marker="o",
            label=name,
        )
    ax.set(xlabel="concurrency", ylabel="throughput (inferences/s)", title=title)
    ax.set_xscale("log", base=2)
    return _save(fig, ax, path)


def gateway_overhead(
    results: dict[str, dict[str, dict[str, float]]], path: Path, title: str
) -> Path:
    """Two bar panels per target: p50 at 1 connection, throughput at 16 connections."""
    names = list(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    p50 = [results[n]["c1"]["p50_us"] / 1e3 for n in names]
    rps = [results[n]["c16"]["rps"] for n in names]
    for ax, values, label, fmt in (
        (left, p50, "p50 latency at 1 connection (ms)", "{:.2f}"),
        (right, rps, "throughput at 16 connections (req/s)", "{:.0f}"),
    ):
        bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=8)
        ax.set(ylabel=label)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _write(fig, path)


def _save(fig: Any, ax: Any, path: Path) -> Path:
    """Grid, legend, layout, write the PNG and free the figure."""
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _write(fig, path)


def _write(fig: Any, path: Path) -> Path:
    """Lay out, write the PNG and free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
