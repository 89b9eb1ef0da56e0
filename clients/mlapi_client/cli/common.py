"""Options and behaviour every subcommand shares: connection, output format, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from mlapi_client.errors import (
    ConnectionFailedError,
    InvalidInputError,
    MlapiError,
    ModelNotFoundError,
    UnsupportedRequestError,
)
from mlapi_client.settings import NO_RETRY, ClientSettings, Endpoint
from mlapi_client.sync_client import Client

EXIT_OK = 0
EXIT_USER_ERROR = 2  # the request was wrong (also argparse's usage-error code)
EXIT_SERVER_ERROR = 3  # the server could not serve a valid request (unavailable, timeout, 5xx)
EXIT_CONNECTION_FAILED = 4  # no server answered

_USER_ERRORS = (InvalidInputError, ModelNotFoundError, UnsupportedRequestError)


def connection_options() -> argparse.ArgumentParser:
    """Build a parent parser with --url, --protocol, --timeout-s and --json."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url",
        help="server URL: http://host:8000 or grpc://host:8001 "
        "(default: $MLAPI_URL, else localhost on $TRITON_HTTP_PORT / $TRITON_GRPC_PORT)",
    )
    group.add_argument(
        "--protocol", choices=("http", "grpc"), help="protocol when --url has no scheme"
    )
    group.add_argument("--timeout-s", type=float, help="per-call timeout in seconds (default 30)")
    group.add_argument("--no-retry", action="store_true", help="fail on the first error")
    parent.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parent


def open_client(args: argparse.Namespace) -> Client:
    """Open a Client from the connection options (else the environment's settings)."""
    if args.url:
        settings = ClientSettings(Endpoint.parse(args.url, args.protocol))
    else:
        settings = ClientSettings.from_env(args.protocol)
    timeout_s = args.timeout_s if args.timeout_s is not None else settings.timeout_s
    retry = NO_RETRY if args.no_retry else settings.retry
    return Client(settings.endpoint.url, timeout_s=timeout_s, retry=retry)


def exit_code(error: MlapiError) -> int:
    """Return the exit status that tells scripts what kind of failure ``error`` is."""
    if isinstance(error, ConnectionFailedError):
        return EXIT_CONNECTION_FAILED
    if isinstance(error, _USER_ERRORS):
        return EXIT_USER_ERROR
    return EXIT_SERVER_ERROR


def run_command(
    args: argparse.Namespace,
    call: Callable[[Client], Any],
    render: Callable[[Any], str],
    to_json: Callable[[Any], Any],
) -> int:
    """Open a client, make the call, print the result; map errors to a message and exit code."""
    try:
        with open_client(args) as client:
            result = call(client)
    except ValueError as exc:  # a malformed --url
        return _fail(args, "UsageError", str(exc), EXIT_USER_ERROR)
    except MlapiError as exc:
        return _fail(args, type(exc).__name__, str(exc), exit_code(exc), _details(exc))
    print(json.dumps(to_json(result), indent=2) if args.json else render(result))
    return EXIT_OK


def _details(error: MlapiError) -> dict[str, Any]:
    details: dict[str, Any] = {"status": error.status}
    if isinstance(error, InvalidInputError):
        details.update(field=error.field, expected=error.expected, got=error.got)
    retry_after_s = getattr(error, "retry_after_s", None)
    if retry_after_s is not None:
        details["retry_after_s"] = retry_after_s
    return details


def _fail(
    args: argparse.Namespace,
    kind: str,
    message: str,
    code: int,
    details: dict[str, Any] | None = None,
) -> int:
    if args.json:
        print(json.dumps({"error": kind, "message": message, **(details or {})}), file=sys.stderr)
    else:
        print(f"mlapi: {kind}: {message}", file=sys.stderr)
    return code
