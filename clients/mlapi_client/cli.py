"""The `mlapi` command line (placeholder until the client library lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("mlapi: no commands yet", file=sys.stderr)
    return 2
