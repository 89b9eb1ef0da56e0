"""The one place where protocol failures become ``MlapiError`` classes.

Keyed on the protocol status: the HTTP status Triton 2.51 returns (its core maps INTERNAL->500,
NOT_FOUND->404, UNAVAILABLE->503, UNSUPPORTED->501, anything else->400) or the gRPC status code.
Message text is read only to fill details (the input field, expected vs got) and where
Triton 2.51 gives no other signal: to tell a full queue from an unavailable model (both
UNAVAILABLE), a dead Python stub from a model failure (both INTERNAL/500), and, over gRPC, the
restricted-protocol refusal from an unavailable model (both UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from tritonclient.utils import InferenceServerException

from mlapi_client import access
from mlapi_client.errors import (
    AccessDeniedError,
    ConnectionFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    MlapiError,
    ModelCrashedError,
    ModelNotFoundError,
    ModelUnavailableError,
    ServerError,
    ServerOverloadedError,
    UnsupportedRequestError,
)

_HTTP: dict[int, type[MlapiError]] = {
    400: InvalidInputError,
    # Triton answers 403 only for its restricted APIs (http_server.cc, --http-restricted-api).
    403: AccessDeniedError,
    404: ModelNotFoundError,
    408: InferenceTimeoutError,
    429: ServerOverloadedError,
    501: UnsupportedRequestError,
    503: ModelUnavailableError,
    504: InferenceTimeoutError,
}
_GRPC: dict[str, type[MlapiError]] = {
    "INVALID_ARGUMENT": InvalidInputError,
    "OUT_OF_RANGE": InvalidInputError,
    "NOT_FOUND": ModelNotFoundError,
    "RESOURCE_EXHAUSTED": ServerOverloadedError,
    "UNIMPLEMENTED": UnsupportedRequestError,
    "UNAVAILABLE": ModelUnavailableError,
    "DEADLINE_EXCEEDED": InferenceTimeoutError,
}
# Triton's UNAVAILABLE messages that mean "overloaded" (core scheduler_utils.cc and
# dynamic_batch_scheduler.cc, release 2.51).
_OVERLOADED_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")

# A dead Python stub: python_backend (python_be.cc, r24.10) fails every request with INTERNAL
# "Stub process '<model>_0_0' is not healthy." and Triton never restarts it. The status is the
# one any model failure gets, so this message is the only signal; a BLS model (digits) passes
# it on inside its own message, hence a search rather than a prefix match.
_DEAD_STUB = re.compile(r"Stub process '[^']+' is not healthy")
# The wait suggested before retrying a dead stub: the supervisor (mlapi_tools.local) detects
# one within 0.1 s and its reload serves again 1.2-2.1 s later (measured on 2 shared CPUs), so
# the client's default 5 attempts, 1 s apart, ride over it.
DEAD_STUB_RETRY_AFTER_S = 1.0
# Triton's refusal of a restricted API over gRPC is UNAVAILABLE, the status of an unavailable
# model (grpc_server.cc, 2.51): its message is the only signal. HTTP uses 403 instead.
_RESTRICTED = ("This protocol is restricted, expecting header", "This API is restricted")

# Triton core (model_repository_manager.cc), for a model or version it does not serve.
_UNKNOWN_MODEL = "Request for unknown model"
# "input 'image': expected ..., got ..." (mlapi_backend.errors.InvalidInputError).
_FIELD_EXPECTED_GOT = re.compile(
    r"input '(?P<field>[^']+)': expected (?P<expected>.+), got (?P<got>.+)$"
)
# Triton core: "inference input 'image' data-type is 'FP32', but model 'digits' expects 'UINT8'".
_CORE_DTYPE = re.compile(
    r"input '(?P<field>[^']+)' data-type is '(?P<got>[^']+)', but model '[^']+' expects '(?P<expected>[^']+)'"
)
# Triton core: "unexpected shape for input 'x' for model 'm'. Expected [..], got [..]".
_CORE_SHAPE = re.compile(
    r"unexpected shape for input '(?P<field>[^']+)'.*Expected (?P<expected>\[[^\]]*\]), got (?P<got>\[[^\]]*\])"
)
_CORE_FIELD = re.compile(r"input '(?P<field>[^']+)'")
# Triton core's own request checks, which a gRPC stream reports with no status at all:
# "unexpected inference input 'x' for model 'm'" and "expected number of inputs between 1 and
# 10 but got 0 inputs for model 'm'" / "... missing required input(s) ...".
_CORE_REQUEST_CHECK = re.compile(
    r"unexpected inference input '|expected number of inputs between|missing required input"
)


@dataclass(frozen=True)
class CallContext:
    """What the caller was doing, so messages can name the model and the remedy."""

    operation: str
    model: str | None = None
    version: str | None = None
    timeout_s: float | None = None

    def target(self) -> str:
        if self.model is None:
            return self.operation
        version = f" version {self.version}" if self.version else ""
        return f"{self.operation} on model '{self.model}'{version}"


class HttpStatusError(Exception):
    """An HTTP error response the project's own HTTP code received (keeps Retry-After)."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class ChannelUnreachableError(Exception):
    """gRPC UNAVAILABLE raised while the channel was not connected: the server is not there."""


class StreamError(Exception):
    """A stream error that came without a status.

    An HTTP SSE ``{"error": ...}`` event after status 200, or a gRPC stream ``error_message``.
    Triton 2.51 honours the
    ``triton_grpc_error`` header (real gRPC statuses) for errors from the model, but still
    reports a request for an unknown model as a status-less ``error_message``.
    """


def translate(exc: BaseException, context: CallContext) -> MlapiError:
    """Return the ``MlapiError`` for ``exc``; callers raise it ``from exc``."""
    if isinstance(exc, MlapiError):
        return exc
    if isinstance(exc, HttpStatusError):
        return _from_status(
            _HTTP.get(exc.status), str(exc.status), exc.message, context, exc.retry_after_s
        )
    if isinstance(exc, InferenceServerException):
        status = exc.status()
        if status is None:  # raised by tritonclient itself, before anything was sent
            return InvalidInputError(f"{context.target()}: {exc.message()}")
        if status.startswith("StatusCode."):
            code = status.removeprefix("StatusCode.")
            return _from_status(_GRPC.get(code), code, exc.message() or "", context, None)
        cls = _HTTP.get(int(status)) if status.isdigit() else None
        return _from_status(cls, status, exc.message() or "", context, None)
    if isinstance(exc, grpc.RpcError):
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return _from_status(_GRPC.get(code), code, details or "", context, None)
    if isinstance(exc, ChannelUnreachableError):
        return ConnectionFailedError(f"{context.target()}: cannot reach the server: {exc}")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return _timeout(context, str(exc))
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError, OSError)):
        return ConnectionFailedError(f"{context.target()}: cannot reach the server: {exc}")
    if isinstance(exc, aiohttp.ClientResponseError):
        return _from_status(_HTTP.get(exc.status), str(exc.status), exc.message, context, None)
    if isinstance(exc, StreamError):
        return _statusless_stream_error(str(exc), context)
    return ServerError(f"{context.target()}: unexpected failure: {type(exc).__name__}: {exc}")


class translated:  # noqa: N801 - used as a function: ``async with translated(context):``
    """Run a block and re-raise any failure as an ``MlapiError`` (cancellation passes through).

    A class rather than an ``asynccontextmanager``: it is on every call's success path, where
    a generator-based one costs a generator and its wrapper per call.
    """

    __slots__ = ("context",)

    def __init__(self, context: CallContext) -> None:
        self.context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or not isinstance(exc, Exception):  # success, or cancellation
            return
        raise translate(exc, self.context) from exc


def _from_status(
    cls: type[MlapiError] | None,
    status: str,
    message: str,
    context: CallContext,
    retry_after_s: float | None,
) -> MlapiError:
    text = f"{context.target()}: {message}"
    if cls is AccessDeniedError or (
        cls is ModelUnavailableError and message.startswith(_RESTRICTED)
    ):
        return _access_denied(context, message, status)
    # Unary calls get it as 500; generate_stream answers its first error with 400, whatever it
    # is. A dead stub is never the caller's fault.
    if cls in (None, InvalidInputError) and _DEAD_STUB.search(message):
        return ModelCrashedError(
            f"{text} (the model's backend process died; it is being reloaded, retry shortly)",
            retry_after_s=retry_after_s if retry_after_s is not None else DEAD_STUB_RETRY_AFTER_S,
            status=status,
        )
    if cls is InvalidInputError:
        return _invalid_input(text, message, status)
    if cls is InferenceTimeoutError:
        return _timeout(context, message, status)
    if cls is ModelUnavailableError and message.split("] ")[-1].startswith(_OVERLOADED_MESSAGES):
        cls = ServerOverloadedError
    if cls is not None and issubclass(cls, ModelUnavailableError):
        return cls(text, retry_after_s=retry_after_s, status=status)
    if cls is None:
        return ServerError(text, status=status)
    return cls(text, status=status)


def _statusless_stream_error(message: str, context: CallContext) -> MlapiError:
    """With no status to key on, Triton's fixed message forms are the only signal left."""
    text = f"{context.target()}: {message}"
    if message.startswith(_RESTRICTED):
        return _access_denied(context, message, None)
    if _DEAD_STUB.search(message):
        return ModelCrashedError(
            f"{text} (the model's backend process died; retry shortly)",
            retry_after_s=DEAD_STUB_RETRY_AFTER_S,
        )
    if message.startswith(_UNKNOWN_MODEL):
        return ModelNotFoundError(text)
    checks = (_FIELD_EXPECTED_GOT, _CORE_DTYPE, _CORE_SHAPE, _CORE_REQUEST_CHECK)
    if any(p.search(message) for p in checks):
        return _invalid_input(text, message, None)
    return ServerError(f"{context.target()}: the stream failed: {message}")


def _access_denied(context: CallContext, message: str, status: str | None) -> AccessDeniedError:
    return AccessDeniedError(
        f"{context.target()}: Triton refused the call: its access key is missing or wrong "
        f"({message}). The client sends the key that mlapi_client.access finds: "
        f"${access.KEY_ENV}, else the file named by ${access.KEY_FILE_ENV}, else "
        f"{access.default_key_file()}; it must equal the key the server was started with.",
        status=status,
    )


def _invalid_input(text: str, message: str, status: str | None) -> InvalidInputError:
    for pattern in (_FIELD_EXPECTED_GOT, _CORE_DTYPE, _CORE_SHAPE):
        match = pattern.search(message)
        if match:
            return InvalidInputError(
                text,
                field=match["field"],
                expected=match["expected"],
                got=match["got"],
                status=status,
            )
    field = _CORE_FIELD.search(message)
    return InvalidInputError(text, field=field["field"] if field else None, status=status)


def _timeout(context: CallContext, detail: str, status: str | None = None) -> InferenceTimeoutError:
    limit = f" within {context.timeout_s:g} s" if context.timeout_s is not None else " in time"
    return InferenceTimeoutError(
        f"{context.target()} did not finish{limit}"
        f"{': ' + detail if detail else ''}. Send a smaller input, raise timeout_s, or use the "
        "asynchronous API (AsyncClient) so a long inference does not block the caller.",
        status=status,
    )


def not_found_or_unavailable(
    error: ModelNotFoundError, index: list[dict[str, Any]], context: CallContext
) -> MlapiError:
    """Refine a NOT_FOUND with the repository index: listed but not ready is unavailable.

    Triton answers NOT_FOUND both for a model it has never heard of and for one that is in
    its repository but not loaded (unloaded, loading, failed). The repository index tells them
    apart: a model (version) listed there is unavailable, not missing.
    """
    rows = [row for row in index if row.get("name") == context.model]
    if context.version:
        rows = [row for row in rows if str(row.get("version", "")) == context.version]
    if not rows:
        return error
    states = ", ".join(
        f"version {row.get('version', '?')} {row.get('state', 'UNKNOWN')}"
        + (f" ({row['reason']})" if row.get("reason") else "")
        for row in rows
    )
    return ModelUnavailableError(
        f"{context.target()}: the model is in the repository but not ready: {states}",
        status=error.status,
    )
