"""``mlapi traffic show|set MODEL``: inspect or change a model's split between versions."""

from __future__ import annotations

import argparse
import json
import os
import sys

from mlapi_client.cli.common import EXIT_OK, EXIT_USER_ERROR, exit_code
from mlapi_client.errors import MlapiError
from mlapi_client.traffic import TrafficController, TrafficStatus, parse_weights


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mlapi traffic`` to the command line."""
    parser = subparsers.add_parser(
        "traffic", help="show or change how traffic is split between model versions"
    )
    actions = parser.add_subparsers(dest="traffic_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the policy, default and live versions")
    change = actions.add_parser(
        "set", help="install a new split, e.g. `set digits 1=90 2=10 --shadow 2`"
    )
    for sub in (show, change):
        sub.add_argument("model", help="public model, e.g. digits")
        sub.add_argument(
            "--url",
            help="Triton address, http://host:port or grpc://host:port "
            "(default: localhost on $TRITON_HTTP_PORT or 8000)",
        )
        sub.add_argument("--json", action="store_true", help="print JSON instead of text")
    change.add_argument(
        "weights",
        nargs="+",
        metavar="VERSION=SHARE",
        help="percent of unpinned traffic per live version; the shares sum to 100",
    )
    change.add_argument(
        "--shadow", type=int, default=None, help="version that gets a copy of all traffic"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Show or change a public model's traffic policy."""
    url = args.url or f"localhost:{os.environ.get('TRITON_HTTP_PORT', '8000')}"
    try:
        with TrafficController(url, args.model) as controller:
            if args.traffic_command == "show":
                status = controller.show()
            else:
                status = controller.set(parse_weights(args.weights), args.shadow)
    except ValueError as exc:  # an address the client cannot use
        print(f"mlapi: UsageError: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MlapiError as exc:
        print(f"mlapi: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exit_code(exc)
    print(json.dumps(status.to_dict(), indent=2) if args.json else _human(status))
    return EXIT_OK


def _human(status: TrafficStatus) -> str:
    total = sum(status.weights.values()) or 1.0
    ordered = sorted(status.weights.items(), key=lambda kv: int(kv[0]))
    return "\n".join(
        [
            f"model:          {status.model} (classifier {status.classifier})",
            f"split:          {', '.join(f'v{v} {100 * w / total:.1f}%' for v, w in ordered)}",
            f"default:        v{status.default_version}",
            f"shadow:         {'v' + status.shadow if status.shadow else 'none'}",
            f"live versions:  {', '.join('v' + v for v in status.live_versions) or 'none'}",
        ]
    )
