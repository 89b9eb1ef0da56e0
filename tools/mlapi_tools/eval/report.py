"""The evaluation's outputs: a JSON document, a markdown table, reliability and confusion plots."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlapi_tools.eval.runner import SetResult
from mlapi_tools.eval.scoring import (
    ECE_BINS,
    TARGETS,
    confusion_matrix,
    expected_calibration_error,
    meets_targets,
    reliability_table,
)


def _pooled_digits(results: Sequence[SetResult], version: int) -> tuple[Any, Any, Any]:
    digit_results = [r for r in results if r.version == version and r.eval_set.is_digit]
    truth = np.concatenate([r.eval_set.labels for r in digit_results])
    labels = np.concatenate([r.answers.labels for r in digit_results])
    scores = np.concatenate([r.answers.scores for r in digit_results])
    return truth, labels, scores


def summarise(results: Sequence[SetResult], settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: per version and set the figures and targets met, pooled ECE."""
    versions: dict[str, Any] = {}
    for version in sorted({r.version for r in results}):
        sets = {}
        for result in (r for r in results if r.version == version):
            figures = result.figures
            sets[result.eval_set.name] = {
                "is_digit": result.eval_set.is_digit,
                "description": result.eval_set.description,
                **figures,
                "targets_met": meets_targets(result.eval_set.is_digit, figures),
            }
        truth, labels, scores = _pooled_digits(results, version)
        correct = labels == truth
        ece = expected_calibration_error(scores, correct)
        all_met = all(all(s["targets_met"].values()) for s in sets.values())
        versions[str(version)] = {
            "sets": sets,
            "digit_sets_pooled": {
                "count": len(truth),
                "accuracy": float(correct.mean()),
                "ece": ece,
                "ece_target_met": ece <= TARGETS["ece_max"],
                "reliability": reliability_table(scores, correct),
            },
            "all_targets_met": bool(all_met and ece <= TARGETS["ece_max"]),
        }
    return {"settings": settings, "targets": TARGETS, "versions": versions}


def git_revision(root: Path) -> str:
    """The checkout's commit (with -dirty when it has changes), or 'unknown' outside git."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _mark(ok: bool) -> str:
    return "" if ok else " ✗"


def markdown(summary: dict[str, Any]) -> str:
    """One table per version: a row per set; ✗ marks a figure that misses its target."""
    t = summary["targets"]
    lines = [
        "# digits evaluation",
        "",
        f"Revision {summary['settings']['revision']}, {summary['settings']['per_set']} images per "
        f"set. Targets: accuracy >= {_pct(t['accuracy_min'])} and silent errors <= "
        f"{_pct(t['silent_error_max'])} and flagged <= {_pct(t['digits_flagged_max'])} on every "
        f"digit set; flagged >= {_pct(t['not_digits_flagged_min'])} on every not-digit set; ECE "
        f"<= {t['ece_max']} over the digit sets together. ✗ marks a miss.",
    ]
    for version, data in summary["versions"].items():
        pooled = data["digit_sets_pooled"]
        lines += [
            "",
            f"## version {version}",
            "",
            f"Digit sets together: {pooled['count']} images, accuracy {_pct(pooled['accuracy'])}, "
            f"ECE {pooled['ece']:.4f}{_mark(pooled['ece_target_met'])}. All targets met: "
            f"{'yes' if data['all_targets_met'] else 'no'}.",
            "",
            "| set | kind | n | accuracy | silent errors | flagged | ECE | reasons |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in data["sets"].items():
            met = s["targets_met"]
            reasons = ", ".join(f"{k} {v}" for k, v in s["reasons"].items()) or "-"
            if s["is_digit"]:
                row = (
                    f"| {name} | digit | {s['count']} | {_pct(s['accuracy'])}"
                    f"{_mark(met['accuracy'])} | {_pct(s['silent_errors'])}"
                    f"{_mark(met['silent_errors'])} | {_pct(s['flagged'])}{_mark(met['flagged'])}"
                    f" | {s['ece']:.3f} | {reasons} |"
                )
            else:
                row = (
                    f"| {name} | not digit | {s['count']} | - | - | {_pct(s['flagged'])}"
                    f"{_mark(met['flagged'])} | - | {reasons} |"
                )
            lines.append(row)
    if len(summary["versions"]) > 1:
        lines += _comparison(summary["versions"])
    return "\n".join(lines) + "\n"


def _comparison(versions: dict[str, Any]) -> list[str]:
    """Side by side: accuracy (digit sets) or flagged share (not-digit sets) of every version."""
    names = list(next(iter(versions.values()))["sets"])
    header = " | ".join(f"v{v}" for v in versions)
    lines = [
        "",
        "## versions compared",
        "",
        "Digit sets: accuracy / silent errors. Not-digit sets: flagged.",
        "",
        f"| set | {header} |",
        "|---|" + "---|" * len(versions),
    ]
    for name in names:
        cells = []
        for data in versions.values():
            s = data["sets"][name]
            cells.append(
                f"{_pct(s['accuracy'])} / {_pct(s['silent_errors'])}"
                if s["is_digit"]
                else _pct(s["flagged"])
            )
        lines.append(f"| {name} | {' | '.join(cells)} |")
    ece = " | ".join(f"{d['digit_sets_pooled']['ece']:.4f}" for d in versions.values())
    lines.append(f"| ECE, digit sets | {ece} |")
    return lines


def plots(results: Sequence[SetResult], out: Path) -> list[Path]:
    """Per version: a reliability diagram and a confusion matrix over the digit sets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for version in sorted({r.version for r in results}):
        truth, labels, scores = _pooled_digits(results, version)
        correct = labels == truth
        table = reliability_table(scores, correct)
        fig, ax = plt.subplots(figsize=(5, 5))
        width = 1.0 / ECE_BINS
        centres = [(row["low"] + row["high"]) / 2 for row in table]
        ax.bar(centres, [row["accuracy"] for row in table], width=width * 0.9, label="accuracy")
        ax.plot(
            [row["confidence"] for row in table if row["count"]],
            [row["accuracy"] for row in table if row["count"]],
            "o",
            color="C1",
            label="(mean confidence, accuracy) of a bin",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ece = expected_calibration_error(scores, correct)
        ax.set(
            xlabel="top-1 score",
            ylabel="accuracy",
            xlim=(0, 1),
            ylim=(0, 1),
            title=f"digits v{version}: reliability over digit sets (ECE {ece:.3f})",
        )
        ax.legend(loc="upper left")
        path = out / f"reliability_v{version}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

        matrix = confusion_matrix(truth, labels)
        fig, ax = plt.subplots(figsize=(5.5, 5))
        image = ax.imshow(matrix, cmap="Blues")
        for (row, col), value in np.ndenumerate(matrix):
            if value:
                colour = "white" if value > matrix.max() / 2 else "black"
                ax.text(col, row, str(value), ha="center", va="center", fontsize=7, color=colour)
        ax.set(
            xticks=range(10),
            yticks=range(10),
            xlabel="predicted",
            ylabel="true",
            title=f"digits v{version}: confusion over digit sets",
        )
        fig.colorbar(image, ax=ax)
        path = out / f"confusion_v{version}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def misses(result: SetResult) -> list[int]:
    """Indices of the images a version got silently wrong (digit sets) or did not flag (others)."""
    answers = result.answers
    if result.eval_set.is_digit:
        wrong = (answers.labels != result.eval_set.labels) & ~answers.flagged
        return [int(i) for i in np.flatnonzero(wrong)]
    return [int(i) for i in np.flatnonzero(~answers.flagged)]


def misses_mosaic(results: Sequence[SetResult], version: int, path: Path, limit: int = 64) -> bool:
    """A grid of a version's misses (64 px tiles, captioned set:true->read), for a look at what
    fails; False when there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = []
    for result in (r for r in results if r.version == version):
        for i in misses(result):
            truth = result.eval_set.labels[i]
            caption = f"{result.eval_set.name[:12]}:{truth if truth >= 0 else 'x'}->"
            caption += f"{result.answers.labels[i]} {result.answers.scores[i]:.2f}"
            tiles.append((result.eval_set.images[i], caption))
    if not tiles:
        return False
    tiles = tiles[:limit]
    columns = 8
    rows = (len(tiles) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.reshape(-1):
        ax.axis("off")
    for ax, (image, caption) in zip(axes.reshape(-1), tiles, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(caption, fontsize=6)
    fig.suptitle(f"digits v{version}: silent errors and unflagged non-digits (first {limit})")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def write(results: Sequence[SetResult], settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write results.json, results.md and the plots into ``out``; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, settings)
    for result in results:
        by_set = summary["versions"][str(result.version)]["sets"][result.eval_set.name]
        by_set["misses"] = misses(result)
        if result.eval_set.is_digit:
            by_set["confusion"] = result.confusion
    (out / "results.json").write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n")
    (out / "results.md").write_text(markdown(summary))
    written = plots(results, out)
    for version in sorted({r.version for r in results}):
        path = out / f"misses_v{version}.png"
        if misses_mosaic(results, version, path):
            written.append(path)
    summary["plots"] = [str(p) for p in written]
    return summary
