"""``mlapi predict <model>``: typed predictions from the public models."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlapi_client.cli.common import connection_options, run_command
from mlapi_client.results import DigitsResult


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mlapi predict`` to the command line."""
    predict = subparsers.add_parser("predict", help="run a public model on an input")
    models = predict.add_subparsers(dest="model", metavar="MODEL", required=True)
    digits = models.add_parser(
        "digits", parents=[connection_options()], help="classify a handwritten digit image"
    )
    digits.add_argument("--image", required=True, type=Path, help="PNG or JPEG file")
    digits.add_argument("--version", type=int, help="pin the classifier version")
    digits.add_argument("--top-k", type=int, help="how many ranked labels to return")
    digits.set_defaults(run=run_digits)


def run_digits(args: argparse.Namespace) -> int:
    """Classify one digit image and print the result."""
    return run_command(
        args,
        lambda client: client.digits(args.image, top_k=args.top_k, version=args.version),
        render_digits,
        DigitsResult.to_dict,
    )


def render_digits(result: DigitsResult) -> str:
    """Render a digits result (label, score, ranking, confidence flag) as text."""
    flag = "yes" if result.low_confidence else "no"
    lines = [
        f"prediction: {result.label} (score {result.score:.4f}, classifier version {result.model_version})",
        f"low confidence: {flag}",
        "ranked:",
    ]
    lines += [f"  {rank}. {p.label}  {p.score:.4f}" for rank, p in enumerate(result.predictions, 1)]
    return "\n".join(lines)
