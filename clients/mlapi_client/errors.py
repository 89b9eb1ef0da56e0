"""The client's exception tree: every failure of the public API is an ``MlapiError``.

Protocol errors are translated into these classes in one place (``error_mapping``); no raw
tritonclient, grpc or aiohttp exception escapes the public API.
"""

from __future__ import annotations


class MlapiError(Exception):
    """Root of every error raised by mlapi_client.

    ``status`` is the protocol status that caused it (``"400"`` over HTTP,
    ``"INVALID_ARGUMENT"`` over gRPC) or None when the failure happened on the client.
    """

    retryable = False

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class InvalidInputError(MlapiError):
    """The request breaks the model's contract; never retried, fix the input.

    ``field``, ``expected`` and ``got`` are filled when the server's message names them.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        expected: str | None = None,
        got: str | None = None,
        status: str | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.field = field
        self.expected = expected
        self.got = got


class ModelNotFoundError(MlapiError):
    """The server has no such model, or no such version of it."""


class UnsupportedRequestError(MlapiError):
    """The server does not support this call for this model (e.g. ``infer`` on a streaming model)."""


class ModelUnavailableError(MlapiError):
    """The model (or the server) exists but cannot serve now; worth retrying later.

    ``retry_after_s`` is the server's hint (a Retry-After header) when it gave one.
    """

    retryable = True

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, status: str | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class ModelCrashedError(ModelUnavailableError):
    """The model's backend process died (Triton: "Stub process '<instance>' is not healthy").

    Triton 2.51 never restarts a dead Python stub; the project's supervisor reloads the model
    within seconds, so this is retried like any unavailable model.
    """


class ServerOverloadedError(ModelUnavailableError):
    """The model's queue is full or the request waited too long in it; back off and retry."""


class InferenceTimeoutError(MlapiError):
    """The call did not finish within its deadline.

    The message names the remedies: send a smaller input, raise ``timeout_s``, or use the
    asynchronous API so a long inference does not block the caller.
    """


class AccessDeniedError(MlapiError):
    """Triton refused the call because the access key is missing or wrong; never retried.

    The message says where the client looks the key up (``mlapi_client.access``).
    """


class ConnectionFailedError(MlapiError):
    """The server could not be reached (refused, reset, DNS, TLS); retried by default."""

    retryable = True


class ServerError(MlapiError):
    """The server failed while handling a valid request (HTTP 5xx, gRPC INTERNAL, ...)."""
