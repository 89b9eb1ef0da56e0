"""The harness's error kinds (keyed on the client's status) and its SIGTERM handling."""

from __future__ import annotations

import os
import signal

import pytest

from mlapi_bench.cli import sigterm_as_exit
from mlapi_bench.clients import CLIENT_TIMEOUT_S, Endpoint, error_kind, open_client
from mlapi_client import (
    NO_RETRY,
    ConnectionFailedError,
    InferenceTimeoutError,
    ModelNotFoundError,
    ModelUnavailableError,
)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ModelUnavailableError("busy", status="UNAVAILABLE"), "status UNAVAILABLE"),
        (ModelNotFoundError("no such version", status="404"), "status 404"),
        (InferenceTimeoutError("late", status="DEADLINE_EXCEEDED"), "status DEADLINE_EXCEEDED"),
        (InferenceTimeoutError("late"), "client_timeout"),  # the client's own deadline
        (TimeoutError(), "client_timeout"),
        (ConnectionFailedError("refused"), "ConnectionFailedError"),
    ],
)
def test_error_kinds_are_the_status_or_the_client_side_failure(
    error: BaseException, kind: str
) -> None:
    assert error_kind(error) == kind


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_harness_client_never_retries_and_has_the_harness_deadline(protocol: str) -> None:
    client = open_client(Endpoint(protocol, "127.0.0.1:1"))
    assert client.protocol == protocol
    assert client.settings.retry == NO_RETRY
    assert client.settings.timeout_s == CLIENT_TIMEOUT_S


def test_sigterm_becomes_system_exit_inside_and_the_old_handler_returns_after() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info, sigterm_as_exit():
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
