"""The config search against a server: reload each candidate, run perf_analyzer, choose, report.

Each model is reloaded with a candidate of config_search's grid through the project's client
(repository API, config override), checked to serve it, and measured by perf_analyzer over gRPC
at each concurrency. The measured model may be reached through the public model that calls it
(digits_classifier through digits, the text encoder through the text_embedder ensemble): the
public path is what the shipped config must serve well. The shipped config is restored after
each model, whatever happened. Output: config_search.csv (every point), frontier_<model>.png
(throughput against p99, frontier and chosen config marked), chosen.json and summary.md.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlapi_bench.config_search import (
    Candidate,
    Choice,
    Grid,
    choose,
    edit_pbtxt,
    frontier,
    shipped_candidate,
)
from mlapi_bench.perf_analyzer import input_data, key_header
from mlapi_bench.perf_analyzer_runs import PerfAnalyzerError, binary, check, environment
from mlapi_bench.report import clean, git_revision, machine, table, write_json
from mlapi_bench.stack import MODEL_REPOSITORY, ROOT, Stack, config_dict, control_client
from mlapi_client import MlapiError

log = logging.getLogger(__name__)

# Sentences of 8-12 word pieces: all fall in the tokenizer's first length bucket (16), so the
# encoder's batcher can merge them, as it merges real short queries.
TEXTS = (
    "How do I reset my password?",
    "The model server loads every version it is given.",
    "Where is the nearest train station?",
    "Batching requests raises the throughput of a server.",
    "What time does the shop open tomorrow?",
    "A small model answers quickly on a laptop.",
)


@dataclass(frozen=True)
class ModelPlan:
    """How one model is searched: which model the load is sent to, and its p99 budget."""

    model: str
    target: str
    budget_ms: float
    # Other max_batch_size values tried in stage 2 (the shipped one is always tried).
    max_batch_sizes: tuple[int, ...] = ()
    version: str = ""


# p99 budgets: about twice the p99 the shipped configs give at c16 on the shared 2-CPU machine
# (digits 23-55 ms, text_embedder 130-200 ms in the first search), so noise alone rarely
# disqualifies a config while a stalling one (500 ms) always is.
PLANS = {
    # max_batch_size of a public model is part of its contract (images per request): kept.
    "digits": ModelPlan("digits", "digits", 100.0),
    # digits calls the classifier one request at a time per digits instance: measured directly,
    # a long queue delay would win on batch-1 callers that the public path never has. 64: the
    # largest batch digits may send it.
    "digits_classifier": ModelPlan("digits_classifier", "digits", 100.0, (64,)),
    # The text_embedder ensemble declares max_batch_size 64, and Triton refuses an ensemble
    # whose step takes fewer: 64 is the only size tried.
    "text_embedder_encoder": ModelPlan("text_embedder_encoder", "text_embedder", 400.0),
}
UNSTABLE = 2  # perf_analyzer's exit status when no three windows agree (its STABILITY_ERROR)
DIRECT_VERSIONS = {"digits_classifier": "2"}  # 8x8 payloads: see payloads.PAYLOAD_VERSIONS


class ConfigSearchError(RuntimeError):
    """A candidate could not be loaded or measured."""


@dataclass(frozen=True)
class SearchSettings:
    models: tuple[str, ...] = ("digits", "digits_classifier", "text_embedder_encoder")
    grid: Grid = field(default_factory=Grid)
    concurrency: tuple[int, ...] = (1, 4, 16)
    measurement_ms: int = 1000
    via: tuple[tuple[str, str], ...] = ()  # (model, target) overriding the plan's target
    budget_ms: float = 0.0  # 0: each plan's own budget
    apply: bool = False


def plan_for(model: str, s: SearchSettings) -> ModelPlan:
    base = PLANS.get(model) or ModelPlan(model, model, s.budget_ms or 100.0)
    target = dict(s.via).get(model, base.target)
    return ModelPlan(
        model,
        target,
        s.budget_ms or base.budget_ms,
        base.max_batch_sizes,
        DIRECT_VERSIONS.get(target, "") if target == model else "",
    )


def write_input(target: str, directory: Path) -> Path:
    """perf_analyzer's --input-data file for ``target`` (real payloads, real texts)."""
    if target == "text_embedder":
        data = {"data": [{"text": {"content": [t], "shape": [1]}} for t in TEXTS]}
    else:
        data = input_data(target)
    path = directory / f"input_{target}.json"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def perf_analyzer_point(
    plan: ModelPlan, url: str, level: int, s: SearchSettings, inputs: Path, csv_path: Path
) -> dict[str, Any]:
    """One perf_analyzer run of ``plan.target`` at ``level`` over gRPC: its figures."""
    cmd = [
        str(binary()), "-m", plan.target, "-i", "grpc", "-u", url, "--input-data", str(inputs),
        "--concurrency-range", f"{level}:{level}", "--measurement-interval", str(s.measurement_ms),
        # Three windows within 100% of each other (see perf_analyzer_runs.command), six tries:
        # a config that stalls (one busy instance behind a queue policy waits out 2.51's 500 ms
        # batcher wake-up) never gets there and is recorded as unstable instead.
        "--stability-percentage", "100", "--max-trials", "6", "--percentile", "99",
        "-f", str(csv_path), *key_header("grpc"), *(["-x", plan.version] if plan.version else []),
    ]  # fmt: skip
    done = subprocess.run(
        cmd, env=environment(), capture_output=True, text=True, timeout=120 + s.measurement_ms / 50
    )
    if done.returncode == UNSTABLE:
        return {"level": level, "status": "unstable", "throughput_per_s": math.nan,
                "p50_us": math.nan, "p99_us": math.nan, "server_queue_us": math.nan,
                "server_compute_us": math.nan}  # fmt: skip
    if done.returncode != 0 or not csv_path.is_file():
        raise PerfAnalyzerError(
            f"perf_analyzer {plan.target} c{level} failed ({done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-800:]}"
        )
    with csv_path.open() as handle:
        record = next(csv.DictReader(handle))
    return {
        "level": level,
        "status": "ok",
        "throughput_per_s": float(record["Inferences/Second"]),
        "p50_us": float(record["p50 latency"]),
        "p99_us": float(record["p99 latency"]),
        "server_queue_us": float(record["Server Queue"]),
        "server_compute_us": float(record["Server Compute Infer"]),
    }


class Searcher:
    """Runs the search of one model on the server of ``stack``."""

    def __init__(self, stack: Stack, s: SearchSettings, out: Path, bar: tqdm[Any]) -> None:
        self.stack, self.s, self.out, self.bar = stack, s, out, bar

    def load(self, model: str, shipped: dict[str, Any], candidate: Candidate) -> None:
        with control_client(self.stack.http_url) as client:
            try:
                client.load_model(model, config=candidate.apply(shipped))
                served = client.model_config(model)
            except MlapiError as exc:
                raise ConfigSearchError(f"{model} refused {candidate.label}: {exc}") from exc
        if not candidate.matches(served):
            raise ConfigSearchError(f"{model} does not serve {candidate.label} after its load")

    def measure(
        self, plan: ModelPlan, shipped: dict[str, Any], candidate: Candidate, stage: int
    ) -> list[dict[str, Any]]:
        self.load(plan.model, shipped, candidate)
        inputs = write_input(plan.target, self.out)
        rows = []
        for level in self.s.concurrency:
            self.bar.set_description(f"{plan.model} {candidate.label} c{level}")
            name = f"pa_{plan.model}_{candidate.label.replace(' ', '_')}_c{level}.csv"
            point = perf_analyzer_point(
                plan, self.stack.grpc_url, level, self.s, inputs, self.out / name
            )
            rows.append({"model": plan.model, "target": plan.target, "stage": stage,
                         **candidate.fields(), **point})  # fmt: skip
            self.bar.update()
        return rows

    def search(self, plan: ModelPlan) -> tuple[list[dict[str, Any]], Choice]:
        """Both stages of ``plan.model``; the shipped config is restored afterwards."""
        path = MODEL_REPOSITORY / plan.model / "config.pbtxt"
        shipped = config_dict(path)
        grid = replace(self.s.grid, max_batch_sizes=plan.max_batch_sizes)
        rows: list[dict[str, Any]] = []
        tried: list[Candidate] = []
        try:
            for candidate in grid.stage1(shipped_candidate(shipped)):
                rows += self.measure(plan, shipped, candidate, 1)
                tried.append(candidate)
            winner = self.choose(plan, rows, tried).candidate
            for candidate in grid.stage2(winner):
                rows += self.measure(plan, shipped, candidate, 2)
                tried.append(candidate)
        finally:
            self.restore(plan.model, path)
        return rows, self.choose(plan, rows, tried)

    def choose(self, plan: ModelPlan, rows: list[dict[str, Any]], tried: list[Candidate]) -> Choice:
        try:
            return choose(rows, tried, plan.budget_ms)
        except ValueError as exc:
            raise ConfigSearchError(f"{plan.model}: {exc}") from exc

    def restore(self, model: str, path: Path) -> None:
        log.info("restoring %s to its repository config", model)
        with control_client(self.stack.http_url) as client:
            client.load_model(model, config=config_dict(path))


def steps(s: SearchSettings) -> int:
    """perf_analyzer runs the search takes at most (stage 2 may try fewer)."""
    stage1 = len(s.grid.instances) * len(s.grid.queue_delays_us) + 1  # + the shipped config
    stage2 = len(s.grid.preferred_batch_sizes) + max(
        (len(plan_for(m, s).max_batch_sizes) for m in s.models), default=0
    )
    return len(s.models) * (stage1 + stage2) * len(s.concurrency)


def run(stack: Stack, s: SearchSettings, out: Path) -> str:
    """Search every model of ``s``; write the table, plots and choices; optionally apply them."""
    check()
    rows: list[dict[str, Any]] = []
    choices: dict[str, Choice] = {}
    plans = [plan_for(m, s) for m in s.models]
    with tqdm(total=steps(s), unit="run") as bar:
        searcher = Searcher(stack, s, out, bar)
        for plan in plans:
            found, choices[plan.model] = searcher.search(plan)
            rows += found
    for r in rows:
        r["chosen"] = r["config"] == choices[r["model"]].candidate.label
    write_csv(out / "config_search.csv", rows)
    for plan in plans:
        plot_frontier([r for r in rows if r["model"] == plan.model], plan, out)
    if s.apply:
        for model, choice in choices.items():
            path = MODEL_REPOSITORY / model / "config.pbtxt"
            path.write_text(edit_pbtxt(path.read_text(), choice.candidate))
            log.info("wrote %s to %s", choice.candidate.label, path)
    return finish(out, s, plans, rows, choices)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def plot_frontier(rows: Sequence[dict[str, Any]], plan: ModelPlan, out: Path) -> Path:
    """Every point as throughput against p99, the frontier joined, the chosen config starred."""
    from mlapi_bench.plots import _write, plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.scatter([r["throughput_per_s"] for r in rows], [r["p99_us"] / 1e3 for r in rows],
               s=14, color="0.6", label="every config x concurrency")  # fmt: skip
    edge = frontier(rows)
    ax.plot([r["throughput_per_s"] for r in edge], [r["p99_us"] / 1e3 for r in edge],
            color="C0", marker="o", label="frontier")  # fmt: skip
    chosen = [r for r in rows if r["chosen"]]
    ax.plot([r["throughput_per_s"] for r in chosen], [r["p99_us"] / 1e3 for r in chosen],
            color="C3", marker="*", markersize=14, ls=":",
            label=f"chosen: {chosen[0]['config'] if chosen else '-'}")  # fmt: skip
    for r in chosen:
        ax.annotate(f"c{r['level']}", (r["throughput_per_s"], r["p99_us"] / 1e3), fontsize=8)
    ax.axhline(plan.budget_ms, color="C1", ls="--", label=f"p99 budget {plan.budget_ms:g} ms")
    via = f" (load through {plan.target})" if plan.target != plan.model else ""
    ax.set(xlabel="throughput (inferences/s)", ylabel="p99 latency (ms)",
           title=f"config search: {plan.model}{via}")  # fmt: skip
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _write(fig, out / f"frontier_{plan.model}.png")


COLUMNS = (
    ("model", "model"),
    ("config", "config"),
    ("stage", "stage"),
    ("level", "c"),
    ("throughput_per_s", "infer/s"),
    ("p50_us", "p50 us"),
    ("p99_us", "p99 us"),
    ("server_queue_us", "queue us"),
    ("server_compute_us", "infer us"),
    ("chosen", "chosen"),
)


def finish(
    out: Path,
    s: SearchSettings,
    plans: Sequence[ModelPlan],
    rows: Sequence[dict[str, Any]],
    choices: dict[str, Choice],
) -> str:
    chosen = {
        plan.model: {"target": plan.target, "budget_ms": plan.budget_ms,
                     **choices[plan.model].candidate.fields(),
                     "throughput_per_s": choices[plan.model].throughput_per_s,
                     "worst_p99_ms": choices[plan.model].worst_p99_ms,
                     "reason": choices[plan.model].reason}
        for plan in plans
    }  # fmt: skip
    (out / "chosen.json").write_text(json.dumps(chosen, indent=2) + "\n")
    info = machine()
    lines = [
        f"# Config search\n\nMeasured at {git_revision(ROOT)} on {info['cpu']} "
        f"({info['cpus_usable']} usable CPUs, shared with the server and anything else running); "
        f"perf_analyzer over gRPC, {s.measurement_ms} ms windows, concurrency "
        f"{','.join(map(str, s.concurrency))}.",
        "## Chosen",
        *(f"- **{m}**: {c['config']} — {c['reason']}" for m, c in chosen.items()),
        table(rows, COLUMNS),
    ]
    markdown = "\n\n".join(lines) + "\n"
    (out / "summary.md").write_text(markdown)
    write_json(out / "summary.json", {"kind": "config_search", "machine": info,
                                      "git_revision": git_revision(ROOT),
                                      "chosen": chosen, "rows": clean(list(rows))})  # fmt: skip
    return markdown
