"""The semantic cache's labelled prompt pairs and the threshold rule chosen on them."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from mlapi_tools.semantic_pairs import pairs, threshold
from mlapi_tools.semantic_pairs.__main__ import PAIRS_FILE


def test_the_shipped_pairs_are_what_the_generator_writes(tmp_path: Path) -> None:
    pairs.write(pairs.build(), tmp_path / "pairs.jsonl")
    assert (tmp_path / "pairs.jsonl").read_bytes() == PAIRS_FILE.read_bytes()


def test_the_pairs_hold_every_kind_in_both_splits() -> None:
    rows = pairs.read(PAIRS_FILE)
    assert len(rows) >= 500
    assert len({p.id for p in rows}) == len(rows)
    counts = collections.Counter((p.kind, p.split) for p in rows)
    for kind in ("paraphrase", "number", "negation", "swap", "shared_words"):
        for split in ("selection", "heldback"):
            assert counts[kind, split] >= 25, (kind, split)
    # 299 negatives with no false hit bound the rate at 1 %: the selection must have that many.
    assert (
        sum(
            n
            for (kind, split), n in counts.items()
            if kind != "paraphrase" and split == "selection"
        )
        >= 299
    )
    assert all((p.label == 1) == (p.kind == "paraphrase") for p in rows)


def test_the_clopper_pearson_bound() -> None:
    assert threshold.false_hit_upper(0, 299) == pytest.approx(1 - 0.05 ** (1 / 299), rel=1e-9)
    assert threshold.false_hit_upper(0, 298) > 0.01 > threshold.false_hit_upper(0, 300)
    assert threshold.false_hit_upper(3, 100) == pytest.approx(0.0766, abs=1e-3)


def test_the_chosen_threshold_maximises_f1_within_the_bound() -> None:
    # 400 negatives: one false hit keeps the bound under 1.2 %, none under 0.75 %.
    sims = [0.99, 0.98, 0.97, 0.90] + [0.975] + [0.5] * 399
    labels = [1, 1, 1, 1] + [0] + [0] * 399
    chosen = threshold.choose(sims, labels, max_false_hit=0.01)
    assert chosen.threshold == 0.98 and chosen.false_hits == 0 and chosen.hits == 2
    looser = threshold.choose(sims, labels, max_false_hit=0.012)
    assert looser.threshold == 0.90 and looser.false_hits == 1 and looser.recall == 1.0
    with pytest.raises(ValueError):
        threshold.choose([0.9, 0.1], [1, 0])  # one negative cannot bound anything
