"""The ``mlapi`` command line, assembled from a registry of subcommand modules.

Each module in ``SUBCOMMANDS`` has ``register(subparsers)``, which adds its parser and sets
``run`` (a function ``argparse.Namespace -> int``) as the parser's default. Adding a command
is adding a module name here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

SUBCOMMANDS = (
    "mlapi_client.cli.predict",
    "mlapi_client.cli.models",
    "mlapi_client.cli.traffic",
    "mlapi_client.cli.keys",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``mlapi`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="mlapi", description="Call the project's models on a Triton server."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log retries and requests")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlapi`` command line; return its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
