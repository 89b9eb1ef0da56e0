"""``python -m mlapi_tools.eval digits``: evaluate the served digits model per classifier version.

Writes results.json, results.md, reliability_v<N>.png and confusion_v<N>.png into ``--out``.
Exit status 0 once written, whatever the figures (they are reported, not asserted); 2 on bad
arguments or versions that are not live.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mlapi_tools.eval import report, runner, sets

log = logging.getLogger("mlapi_tools.eval")
ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PER_SET = 300


def _versions(text: str) -> list[int]:
    try:
        versions = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected versions like 1,2,3, got {text!r}") from None
    if not versions or min(versions) < 1:
        raise argparse.ArgumentTypeError(f"expected positive versions, got {text!r}")
    return versions


def parser() -> argparse.ArgumentParser:
    """The command line (one subcommand per evaluated model; digits for now)."""
    top = argparse.ArgumentParser(prog="python -m mlapi_tools.eval", description=__doc__)
    models = top.add_subparsers(dest="model", required=True)
    digits = models.add_parser("digits", help="evaluate digits, pinned to each version")
    digits.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    digits.add_argument("--backend-dir", type=Path, default=ROOT / "build" / "backends")
    digits.add_argument("--out", type=Path, default=ROOT / "build" / "eval")
    digits.add_argument(
        "--url", help="a running Triton (http://host:port or grpc://host:port) instead of one"
    )
    digits.add_argument(
        "--versions",
        type=_versions,
        help="comma-separated classifier versions (default: every built one)",
    )
    digits.add_argument("--per-set", type=int, default=DEFAULT_PER_SET, help="images per set")
    digits.add_argument(
        "--sets", help=f"comma-separated sets (default: all of {', '.join(sets.SET_NAMES)})"
    )
    digits.add_argument("--no-progress", action="store_true", help="no progress bar")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Build the sets, run every version over them, write the report."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parser().parse_args(argv)
    versions = args.versions or runner.built_versions(args.repository)
    if not versions:
        log.error("no built classifier version under %s (run `make models`)", args.repository)
        return 2
    names = [n.strip() for n in args.sets.split(",")] if args.sets else list(sets.SET_NAMES)
    started = time.monotonic()
    try:
        eval_sets = [sets.build_set(name, args.per_set) for name in names]
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    log.info(
        "built %d sets of %d images in %.1f s", len(eval_sets), args.per_set,
        time.monotonic() - started,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(
            runner.started_server(
                args.repository.resolve(), args.backend_dir.resolve(), args.out / "tritonserver.log"
            )
        )
        try:
            results = runner.evaluate(url, versions, eval_sets, progress=not args.no_progress)
        except RuntimeError as exc:
            log.error("%s", exc)
            return 2
    settings = {
        "revision": report.git_revision(ROOT),
        "per_set": args.per_set,
        "versions": versions,
        "sets": names,
        "seed": sets.EVAL_SEED,
        "server": args.url or "started by the command",
    }
    summary = report.write(results, settings, args.out)
    sys.stdout.write(report.markdown(summary))
    log.info("wrote %s (%.0f s)", args.out / "results.md", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
