"""``mlapi keys create --scope predict``: make a gateway API key (the key is the last word).

Only the key's SHA-256 goes into the keys file, which a running gateway re-reads, so the key
works at once. The key itself is printed once and stored nowhere.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlapi_client.cli.common import EXIT_OK, EXIT_USER_ERROR

DEFAULT_KEYS_FILE = "build/gateway/keys.json"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mlapi keys`` to the command line."""
    keys = subparsers.add_parser("keys", help="manage the gateway's API keys")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument(
        "--scope",
        action="append",
        choices=("predict", "admin"),
        required=True,
        help="a scope of the key (repeatable)",
    )
    create.add_argument("--plan", default="default", help="rate-limit plan (default: default)")
    create.add_argument("--name", default="", help="a label for the key (who holds it)")
    create.add_argument(
        "--keys-file",
        type=Path,
        default=Path(os.environ.get("MLAPI_GATEWAY_KEYS_FILE", DEFAULT_KEYS_FILE)),
        help="the gateway's keys file (default: $MLAPI_GATEWAY_KEYS_FILE, else "
        f"{DEFAULT_KEYS_FILE})",
    )
    create.set_defaults(run=run_create)


def run_create(args: argparse.Namespace) -> int:
    """Create a gateway API key, store its record and print the key once."""
    # The key format and file layout belong to the gateway; the CLI only drives them.
    from mlapi_gateway.keys import add_key, new_key

    try:
        key, record = new_key(sorted(set(args.scope)), args.plan, args.name)
        add_key(args.keys_file, record)
    except (OSError, ValueError) as exc:
        print(f"mlapi: keys: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"key id {record.id} (scopes: {', '.join(sorted(record.scopes))}; plan: {record.plan})")
    print(f"added to {args.keys_file}; the key is shown once:")
    print(key)
    return EXIT_OK
