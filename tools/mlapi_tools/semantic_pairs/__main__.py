"""``python -m mlapi_tools.semantic_pairs``: write the prompt pairs, choose and report the threshold.

- ``build``: (re)write ``prompt_pairs.jsonl`` beside this file from the templates (deterministic).
- ``threshold``: embed every pair in-process with the served text_embedder files; a pair the
  gateway's lexical guard (mlapi_gateway.cache.prompt_guard) refuses never hits whatever its
  cosine; choose the threshold on the selection split and measure it on the held-back split
  (also without the guard, for comparison); write
  ``threshold.json`` beside the pairs (the gateway's default ``semantic_cache_threshold`` is
  its ``selection.threshold``, rounded up to 4 decimals: never below the chosen one).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

from mlapi_gateway.cache.prompt_guard import compatible
from mlapi_tools.semantic_pairs import pairs, threshold

HERE = Path(__file__).resolve().parent
PAIRS_FILE = HERE / "prompt_pairs.jsonl"
RESULT_FILE = HERE / "threshold.json"
ROOT = HERE.parents[2]
log = logging.getLogger("mlapi_tools.semantic_pairs")


def similarities(rows: list[pairs.Pair], repository: Path) -> list[float]:
    """Return the cosine similarity of each pair's prompts (text_embedder's unit vectors)."""
    from mlapi_tools.semantic_pairs.embedding import LocalEmbedder

    embedder = LocalEmbedder(repository)
    texts = sorted({p.a for p in rows} | {p.b for p in rows})
    vectors = dict(zip(texts, embedder.embed(texts, batch=1), strict=True))
    return [float(np.dot(vectors[p.a], vectors[p.b])) for p in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlapi_tools.semantic_pairs")
    parser.add_argument("command", choices=["build", "threshold"])
    parser.add_argument("--pairs", type=Path, default=PAIRS_FILE)
    parser.add_argument("--out", type=Path, default=RESULT_FILE)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--max-false-hit", type=float, default=0.01)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "build":
        rows = pairs.build()
        pairs.write(rows, args.pairs)
        log.info("wrote %d pairs to %s", len(rows), args.pairs)
        return 0
    rows = pairs.read(args.pairs)
    sims = similarities(rows, args.repository)
    labels, kinds, splits = [p.label for p in rows], [p.kind for p in rows], [p.split for p in rows]
    guarded = [s if compatible(p.a, p.b) else -1.0 for s, p in zip(sims, rows, strict=True)]
    result = threshold.report(guarded, labels, kinds, splits, args.max_false_hit)
    try:
        result["cosine_only"] = threshold.report(sims, labels, kinds, splits, args.max_false_hit)
    except ValueError as exc:
        result["cosine_only"] = {"error": str(exc)}
    # Harder: whole templates held back (odd template numbers), phrasings selection never saw.
    by_template = [
        "heldback" if int(p.template.rsplit("-", 1)[1]) % 2 else "selection" for p in rows
    ]
    try:
        result["template_split"] = threshold.report(
            guarded, labels, kinds, by_template, args.max_false_hit
        )
    except ValueError as exc:
        result["template_split"] = {"error": str(exc)}
    result["guard_refused"] = {
        kind: sum(g < 0 for g, k in zip(guarded, kinds, strict=True) if k == kind)
        for kind in sorted(set(kinds))
    }
    result["setting"] = math.ceil(result["selection"]["threshold"] * 1e4) / 1e4
    result["pairs"] = len(rows)
    result["by_kind_similarity"] = {
        kind: {
            "min": round(min(s for s, p in zip(sims, rows, strict=True) if p.kind == kind), 4),
            "median": round(
                float(np.median([s for s, p in zip(sims, rows, strict=True) if p.kind == kind])), 4
            ),
            "max": round(max(s for s, p in zip(sims, rows, strict=True) if p.kind == kind), 4),
        }
        for kind in sorted({p.kind for p in rows})
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
