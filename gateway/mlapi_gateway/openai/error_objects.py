"""Gateway errors as OpenAI's error object: ``{"error": {message, type, param, code}}``.

The status is the gateway's own (problems.status_of), so the openai package raises the
exception class of that status (BadRequestError, AuthenticationError, NotFoundError,
RateLimitError, InternalServerError...). Retry-After and WWW-Authenticate headers stay.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

from mlapi_gateway import errors
from mlapi_gateway.metrics import count_error
from mlapi_gateway.problems import log_server_error, status_of

# (error class, OpenAI error type, code); subclasses before their parents.
KINDS: tuple[tuple[type[errors.GatewayError], str, str | None], ...] = (
    (errors.BodyTooLargeError, "invalid_request_error", "request_too_large"),
    (errors.RequestInvalidError, "invalid_request_error", None),
    (errors.BodyTimeoutError, "invalid_request_error", "request_timeout"),
    (errors.AuthenticationRequiredError, "authentication_error", "invalid_api_key"),
    (errors.ScopeMissingError, "permission_error", "insufficient_scope"),
    (errors.NotFoundError, "invalid_request_error", "model_not_found"),
    (errors.TooManyStreamsError, "rate_limit_error", "too_many_streams"),
    (errors.RateLimitedError, "rate_limit_error", "rate_limit_exceeded"),
    (errors.OverloadedError, "server_error", "overloaded"),
    (errors.UnavailableError, "server_error", "model_unavailable"),
    (errors.DeadlineExceededError, "server_error", "timeout"),
    (errors.ModelFailedError, "server_error", "model_error"),
)


def error_object(error: errors.GatewayError) -> dict[str, Any]:
    """Return the OpenAI error object of ``error`` (``param``: the first field it names)."""
    kind, code = "server_error", None
    for cls, name, error_code in KINDS:
        if isinstance(error, cls):
            kind, code = name, error_code
            break
    param = None
    message = error.detail
    if isinstance(error, errors.RequestInvalidError) and error.errors:
        param = error.errors[0].field
        details = "; ".join(_field_text(e) for e in error.errors)
        message = f"{error.detail}: {details}" if details not in error.detail else error.detail
        code = code or "invalid_value"
    if isinstance(error, errors.NotFoundError) and error.available:
        message = f"{message} (available: {', '.join(error.available)})"
        param = "model"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _field_text(field: errors.FieldError) -> str:
    text = f"{field.field}: {field.message}"
    return f"{text} (expected {field.expected})" if field.expected else text


def error_headers(error: errors.GatewayError) -> dict[str, str]:
    """Return the headers of ``error``'s answer (Retry-After, WWW-Authenticate)."""
    headers: dict[str, str] = {}
    if isinstance(error, (errors.RateLimitedError, errors.UnavailableError)):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, errors.AuthenticationRequiredError):
        headers["WWW-Authenticate"] = 'Bearer realm="mlapi"'
    return headers


def error_response(
    error: errors.GatewayError,
    request_id: str | None,
    where: str,
    headers: dict[str, str] | None = None,
) -> Response:
    """Count, log (5xx) and answer ``error`` as an OpenAI error object."""
    status = status_of(error)
    count_error(error.error_type, status)
    log_server_error(error, request_id, where)
    return Response(
        orjson.dumps(error_object(error)),
        status,
        headers={**(headers or {}), **error_headers(error)},
        media_type="application/json",
    )
