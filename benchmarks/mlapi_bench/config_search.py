"""A measured config search over a model's scheduling settings, like Triton's Model Analyzer.

For each model the search tries a bounded grid of ``instance_group`` count, ``max_batch_size``,
dynamic batching's ``max_queue_delay_microseconds`` and ``preferred_batch_size``, each loaded
through the repository API with a config override and measured by perf_analyzer at a few
concurrencies (config_search_runs drives it). This module holds the pure parts: the grid, the
frontier, the choice and its reason, and the edit of a config.pbtxt to the chosen values.

The grid is searched in two stages to stay cheap on a small machine: stage 1 is every instance
count x queue delay at the shipped max_batch_size; stage 2 varies the stage-1 winner's
preferred batch sizes and max_batch_size, one at a time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

# Throughputs within this fraction of the best count as equal: on a shared 2-CPU machine two
# runs of one config differ by about that much. Ties go to the lower p99 at the lowest load.
TIE_FRACTION = 0.05


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: the scheduling settings a model is loaded with."""

    instances: int
    max_batch_size: int
    queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        text = f"x{self.instances} mbs{self.max_batch_size} delay{self.queue_delay_us}us"
        if self.preferred_batch_sizes:
            text += " pref" + ",".join(map(str, self.preferred_batch_sizes))
        return text

    def fields(self) -> dict[str, Any]:
        return {
            "config": self.label,
            "instances": self.instances,
            "max_batch_size": self.max_batch_size,
            "queue_delay_us": self.queue_delay_us,
            "preferred_batch_sizes": " ".join(map(str, self.preferred_batch_sizes)),
        }

    def apply(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` (the repository API's JSON form) with this candidate's settings.

        Everything else of dynamic batching (the queue policy) and of the instance group
        (its kind) is kept.
        """
        changed = copy.deepcopy(config)
        changed["max_batch_size"] = self.max_batch_size
        batching = dict(changed.get("dynamic_batching") or {})
        batching["max_queue_delay_microseconds"] = self.queue_delay_us
        batching.pop("preferred_batch_size", None)
        if self.preferred_batch_sizes:
            batching["preferred_batch_size"] = list(self.preferred_batch_sizes)
        changed["dynamic_batching"] = batching
        groups = changed.get("instance_group") or [{"kind": "KIND_CPU"}]
        changed["instance_group"] = [{**groups[0], "count": self.instances}]
        return changed

    def matches(self, served: dict[str, Any]) -> bool:
        """Whether a config read back from the server is this candidate."""
        batching = served.get("dynamic_batching") or {}
        count = sum(int(group.get("count", 1)) for group in served.get("instance_group", []))
        preferred = tuple(int(x) for x in batching.get("preferred_batch_size", []))
        # Without preferred sizes the server may fill in its own: not ours to check.
        wanted = self.preferred_batch_sizes or preferred
        return (
            count == self.instances
            and int(served.get("max_batch_size", 0)) == self.max_batch_size
            and int(batching.get("max_queue_delay_microseconds", 0)) == self.queue_delay_us
            and preferred == wanted
        )


@dataclass(frozen=True)
class Grid:
    """The values tried: stage 1 crosses instances and delays, stage 2 varies the winner."""

    # max_batch_sizes: the other sizes stage 2 tries (the shipped one is always tried).

    instances: tuple[int, ...] = (1, 2)
    queue_delays_us: tuple[int, ...] = (0, 100, 500, 2000)
    preferred_batch_sizes: tuple[tuple[int, ...], ...] = ((4, 8),)
    max_batch_sizes: tuple[int, ...] = ()

    def stage1(self, shipped: Candidate) -> list[Candidate]:
        """Every instance count x delay at the shipped max_batch_size, and the shipped config
        itself: the search never replaces it without having measured it."""
        found = [
            Candidate(n, shipped.max_batch_size, delay)
            for n in self.instances
            for delay in self.queue_delays_us
        ]
        return found if shipped in found else [*found, shipped]

    def stage2(self, winner: Candidate) -> list[Candidate]:
        """The winner with each other preferred-size set, then each other max_batch_size."""
        found = [
            replace(winner, preferred_batch_sizes=sizes)
            for sizes in self.preferred_batch_sizes
            if sizes != winner.preferred_batch_sizes and max(sizes) <= winner.max_batch_size
        ]
        found += [
            replace(
                winner,
                max_batch_size=mbs,
                preferred_batch_sizes=tuple(s for s in winner.preferred_batch_sizes if s <= mbs),
            )
            for mbs in self.max_batch_sizes
            if mbs != winner.max_batch_size
        ]
        return found


@dataclass(frozen=True)
class Choice:
    """The chosen candidate of one model and why."""

    candidate: Candidate
    reason: str
    throughput_per_s: float
    worst_p99_ms: float


def shipped_candidate(config: dict[str, Any]) -> Candidate:
    """The candidate a config (the repository API's JSON form) is."""
    batching = config.get("dynamic_batching") or {}
    return Candidate(
        sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1,
        int(config["max_batch_size"]),
        int(batching.get("max_queue_delay_microseconds", 0)),
        tuple(int(x) for x in batching.get("preferred_batch_size", [])),
    )


def _by_config(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault(r["config"], []).append(r)
    return {k: sorted(v, key=lambda r: r["level"]) for k, v in grouped.items()}


def choose(
    rows: Sequence[dict[str, Any]], candidates: Sequence[Candidate], budget_ms: float
) -> Choice:
    """The candidate with the highest throughput at the top concurrency whose p99 stays under
    ``budget_ms`` at every concurrency measured (a candidate with an unstable point is out).

    Candidates within TIE_FRACTION of the best throughput are ties, broken by the lower p99 at
    the lowest concurrency, then fewer instances. When no candidate stays under the budget the
    one with the lowest worst p99 is chosen, and the reason says so.
    """
    by_label = {c.label: c for c in candidates}
    grouped = {
        k: v
        for k, v in _by_config(rows).items()
        if k in by_label and all(r.get("status", "ok") == "ok" for r in v)
    }
    if not grouped:
        raise ValueError("no candidate was measured stably at every concurrency")
    top = {k: v[-1]["throughput_per_s"] for k, v in grouped.items()}
    worst = {k: max(r["p99_us"] for r in v) / 1e3 for k, v in grouped.items()}
    low = {k: v[0]["p99_us"] / 1e3 for k, v in grouped.items()}
    top_level = max(r["level"] for r in rows)
    low_level = min(r["level"] for r in rows)
    measured = {r["config"] for r in rows if r["config"] in by_label}
    unstable = len(measured) - len(grouped)
    eligible = [k for k in grouped if worst[k] <= budget_ms]
    if not eligible:
        label = min(grouped, key=lambda k: worst[k])
        return Choice(
            by_label[label],
            f"no config kept p99 under {budget_ms:g} ms at every concurrency; this one has "
            f"the lowest worst p99 ({worst[label]:.1f} ms), {top[label]:.0f} infer/s at "
            f"c{top_level}",
            top[label],
            worst[label],
        )
    best = max(top[k] for k in eligible)
    ties = [k for k in eligible if top[k] >= best * (1 - TIE_FRACTION)]
    label = min(ties, key=lambda k: (low[k], by_label[k].instances))
    reason = (
        f"highest throughput at c{top_level} with p99 <= {budget_ms:g} ms at every concurrency "
        f"({len(eligible)} of {len(measured)} configs qualify"
        + (f", {unstable} unstable" if unstable else "")
        + f"): {top[label]:.0f} infer/s, worst p99 {worst[label]:.1f} ms"
    )
    if len(ties) > 1:
        reason += (
            f"; {len(ties)} configs within {TIE_FRACTION:.0%} of the best ({best:.0f} infer/s), "
            f"this one with the lowest p99 at c{low_level} ({low[label]:.1f} ms)"
        )
    return Choice(by_label[label], reason, top[label], worst[label])


def frontier(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pareto frontier of (throughput up, p99 down) over every stable point."""
    stable = [r for r in rows if r.get("status", "ok") == "ok"]
    ordered = sorted(stable, key=lambda r: (-r["throughput_per_s"], r["p99_us"]))
    kept: list[dict[str, Any]] = []
    for r in ordered:
        if not kept or r["p99_us"] < kept[-1]["p99_us"]:
            kept.append(r)
    return sorted(kept, key=lambda r: r["throughput_per_s"])


class ConfigEditError(ValueError):
    """A config.pbtxt does not have the lines the edit expects."""


_MBS = re.compile(r"^(max_batch_size:\s*)\d+", re.M)
_DELAY = re.compile(r"^(\s*max_queue_delay_microseconds:\s*)\d+", re.M)
_PREFERRED = re.compile(r"^\s*preferred_batch_size:.*\n", re.M)
_COUNT = re.compile(r"^(instance_group\s*\[.*?count:\s*)\d+", re.M)


def edit_pbtxt(text: str, candidate: Candidate) -> str:
    """``text`` of a config.pbtxt with only its max_batch_size, queue delay, preferred batch
    sizes and instance count lines changed to ``candidate``'s; comments and order are kept.
    """
    for pattern, what in ((_MBS, "max_batch_size"), (_DELAY, "max_queue_delay_microseconds"),
                          (_COUNT, "a one-line instance_group with a count")):  # fmt: skip
        if len(pattern.findall(text)) != 1:
            raise ConfigEditError(f"expected exactly one {what} line")
    text = _MBS.sub(lambda m: f"{m[1]}{candidate.max_batch_size}", text)
    text = _COUNT.sub(lambda m: f"{m[1]}{candidate.instances}", text)
    text = _PREFERRED.sub("", text)
    delay = _DELAY.search(text)
    assert delay is not None
    line = f"{delay[1]}{candidate.queue_delay_us}"
    if candidate.preferred_batch_sizes:
        indent = delay[1][: len(delay[1]) - len(delay[1].lstrip())]
        sizes = ", ".join(map(str, candidate.preferred_batch_sizes))
        line += f"\n{indent}preferred_batch_size: [ {sizes} ]"
    return text[: delay.start()] + line + text[delay.end() :]
