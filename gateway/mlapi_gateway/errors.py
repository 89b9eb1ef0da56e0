"""The gateway's exception tree.

Each class knows its problem type; ``problems.register_error_handlers`` pairs every class with
its HTTP status in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One field-level validation error: where (``body.top_k``), what went wrong, what is expected."""

    field: str
    message: str
    expected: str | None = None

    def to_dict(self) -> dict[str, str]:
        out = {"field": self.field, "message": self.message}
        if self.expected:
            out["expected"] = self.expected
        return out


class GatewayError(Exception):
    """Root of every error the gateway answers with a problem document."""

    title = "Gateway error"
    error_type = "internal"  # the metrics label (mlapi_gateway_errors_total{type=...})

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class RequestInvalidError(GatewayError):
    """A request the gateway or the model refuses; ``errors`` name the fields."""

    title = "Invalid request"
    error_type = "validation"

    def __init__(self, detail: str, errors: list[FieldError]) -> None:
        super().__init__(detail)
        self.errors = errors


class BodyTooLargeError(RequestInvalidError):
    """A body over ``max_body_bytes``: refused by its Content-Length or once that much arrived."""

    title = "Request body too large"
    error_type = "body_too_large"


class BodyTimeoutError(GatewayError):
    """The body was still arriving ``body_timeout_s`` after the gateway started reading it."""

    title = "Request body timeout"
    error_type = "body_timeout"


class AuthenticationRequiredError(GatewayError):
    """No API key, or one the gateway does not know."""

    title = "Authentication required"
    error_type = "auth"


class ScopeMissingError(GatewayError):
    """The key is valid but lacks the route's scope."""

    title = "Forbidden"
    error_type = "auth"


class NotFoundError(GatewayError):
    """An unknown model, version or job; ``available`` names what exists."""

    title = "Not found"
    error_type = "not_found"

    def __init__(self, detail: str, available: list[str] | None = None) -> None:
        super().__init__(detail)
        self.available = available


class ConflictError(GatewayError):
    """The request contradicts the resource's state (e.g. cancelling a finished job)."""

    title = "Conflict"
    error_type = "conflict"


class RateLimitedError(GatewayError):
    """The caller's bucket is empty; worth retrying after ``retry_after_s``."""

    title = "Too many requests"
    error_type = "rate_limit"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class TooManyStreamsError(RateLimitedError):
    """The caller already holds ``max_streams_per_key`` open streams on this worker."""

    title = "Too many open streams"
    error_type = "stream_limit"


class UnavailableError(GatewayError):
    """Triton is unreachable or the model is not ready; worth retrying after ``retry_after_s``."""

    title = "Model unavailable"
    error_type = "unavailable"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class AccessKeyRefusedError(UnavailableError):
    """Triton refused the gateway's own access key.

    A 503 to callers (retrying may help once an operator fixes the key), but logged as an
    error, since only an operator can fix it.
    """


class OverloadedError(UnavailableError):
    """This worker already serves ``max_in_flight`` requests: shed before any work is done."""

    title = "Gateway overloaded"
    error_type = "overloaded"


class SlowClientError(GatewayError):
    """A stream's caller read so slowly that its event buffer stayed full.

    An SSE error event only: the HTTP status of the stream was 200 long before.
    """

    title = "Slow client"
    error_type = "slow_client"


class DeadlineExceededError(GatewayError):
    """The model did not answer within the request's deadline."""

    title = "Inference deadline exceeded"
    error_type = "timeout"


class ModelFailedError(GatewayError):
    """The model failed on a valid request (Triton 5xx, a response outside the contract)."""

    title = "Model error"
    error_type = "model_error"
