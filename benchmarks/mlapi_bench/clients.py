"""The harness's client: the project's own ``mlapi_client.AsyncClient``, set up for measuring.

The harness measures what users of the project get, so it sends every request through the
client they use, over either protocol: numpy tensors in, the client's encoding, connection
pool (HTTP) or channel (gRPC), error mapping. It never retries (a failed request is counted,
not hidden), and a request that takes longer than ``CLIENT_TIMEOUT_S`` is an error. Errors are
turned into a short *kind* keyed on the status the client's error carries (never on message
text), so they can be counted by kind. Raw baselines (perf_analyzer, wrk) live elsewhere and
are named as such.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlapi_client import NO_RETRY, AsyncClient, InferenceTimeoutError, MlapiError
from mlapi_client.settings import Protocol

PROTOCOLS = ("grpc", "http")
# A request that takes longer than this is counted as an error (kind "client_timeout").
CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Endpoint:
    """Where one protocol of one server listens (``host:port``, no scheme). Picklable."""

    protocol: str
    url: str

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


def open_client(endpoint: Endpoint) -> AsyncClient:
    """An AsyncClient of ``endpoint``: no retries, the harness's timeout, the server's key."""
    protocol: Protocol = "grpc" if endpoint.protocol == "grpc" else "http"
    return AsyncClient(endpoint.url, protocol=protocol, timeout_s=CLIENT_TIMEOUT_S, retry=NO_RETRY)


def error_kind(exc: BaseException) -> str:
    """A short, countable name for a failed request: the status, or the client-side failure."""
    if isinstance(exc, MlapiError) and exc.status:
        return f"status {exc.status}"
    if isinstance(exc, InferenceTimeoutError | TimeoutError):
        return "client_timeout"
    return type(exc).__name__
