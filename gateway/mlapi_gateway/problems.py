"""RFC 9457 problem documents, and the one place where exceptions become HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from mlapi_gateway import errors
from mlapi_gateway.metrics import CLIENT_CLOSED, count_error
from mlapi_gateway.request_id import request_id_of

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://mlapi.dev/problems/"


def problem(
    status: int,
    title: str,
    detail: str,
    error_type: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
    **extra: Any,
) -> Response:
    """Return a problem+json response from its fields (for errors outside the tree)."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + error_type.replace("_", "-"),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    body.update({k: v for k, v in extra.items() if v is not None})
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_JSON)


def field_errors_from_pydantic(errors_: list[Any], prefix: str = "body") -> list[errors.FieldError]:
    """Pydantic's error list as field errors with dotted paths (``body.pixels.3``)."""
    out = []
    for error in errors_:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        field = ".".join([prefix, *loc]) if loc else prefix
        message = error.get("msg", "invalid value")
        if error.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {error.get('ctx', {}).get('error', message)}"
        out.append(errors.FieldError(field, message))
    return out


# (exception class, status). Order matters only for subclasses, listed before their parents.
STATUS_BY_ERROR: tuple[tuple[type[errors.GatewayError], int], ...] = (
    (errors.BodyTooLargeError, 413),
    (errors.RequestInvalidError, 400),
    (errors.BodyTimeoutError, 408),
    (errors.AuthenticationRequiredError, 401),
    (errors.ScopeMissingError, 403),
    (errors.NotFoundError, 404),
    (errors.ConflictError, 409),
    (errors.RateLimitedError, 429),
    (errors.ModelFailedError, 502),
    (errors.UnavailableError, 503),
    (errors.DeadlineExceededError, 504),
    (errors.SlowClientError, CLIENT_CLOSED),  # in SSE error events only
)


def status_of(error: errors.GatewayError) -> int:
    """Return the HTTP status of ``error`` (STATUS_BY_ERROR; 500 for anything else)."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


def problem_body(
    error: errors.GatewayError, instance: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """Return the problem document of a gateway error as a dict.

    HTTP answers, SSE error events and job results all carry this one shape (``request_id``
    lets a caller quote the request).
    """
    status = status_of(error)
    body: dict[str, Any] = {
        "type": TYPE_BASE + error.error_type.replace("_", "-"),
        "title": error.title,
        "status": status,
        "detail": error.detail,
    }
    if instance:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    if isinstance(error, errors.RequestInvalidError):
        body["errors"] = [e.to_dict() for e in error.errors]
    if isinstance(error, errors.NotFoundError) and error.available is not None:
        body["available"] = error.available
    if isinstance(error, (errors.RateLimitedError, errors.UnavailableError)):
        body["retry_after_s"] = error.retry_after_s
    return body


def render(
    error: errors.GatewayError, instance: str | None = None, request_id: str | None = None
) -> Response:
    """Return the problem+json response of a gateway error, with its headers."""
    headers: dict[str, str] = {}
    if isinstance(error, (errors.RateLimitedError, errors.UnavailableError)):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, errors.AuthenticationRequiredError):
        headers["WWW-Authenticate"] = 'Bearer realm="mlapi"'
    body = problem_body(error, instance, request_id)
    return Response(orjson.dumps(body), body["status"], headers=headers, media_type=PROBLEM_JSON)


def log_server_error(error: errors.GatewayError, request_id: str | None, where: str) -> None:
    """Log a 5xx answer once, with the request id and the upstream cause (type and message).

    503s (sheds, Triton or the model unavailable) are logged at warning: they are expected
    under overload and during restarts, and say what to retry; every other 5xx is an error,
    and so is a refused access key (a 503 only an operator can end).
    Below 500 nothing is logged: the caller's own mistake is in the answer and the access log.
    """
    status = status_of(error)
    if status < 500:
        return
    cause = error.__cause__
    because = f"{type(cause).__name__}: {cause}" if cause is not None else "no upstream cause"
    log.log(
        logging.WARNING
        if status == 503 and not isinstance(error, errors.AccessKeyRefusedError)
        else logging.ERROR,
        "%s -> %d %s: %s (request %s; cause %s)",
        where, status, error.error_type, error.detail, request_id, because,
    )  # fmt: skip


def internal_error(
    scope: Any, exc: BaseException, request_id: str | None, answer: bool
) -> Response:
    """Log an unexpected exception once and return the 500 problem that names no detail of it.

    The log line has the traceback and the request id; ``answer``: the caller still waits for
    the problem (it is counted then).
    """
    log.error(
        "%s %s -> 500 internal: unhandled %s: %s (request %s)",
        scope.get("method"), scope.get("path"), type(exc).__name__, exc, request_id,
        exc_info=exc,
    )  # fmt: skip
    if answer:
        count_error("internal", 500)
    return problem(
        500, "Internal error", "the gateway failed; see its log", "internal",
        scope.get("path"), None, request_id,
    )  # fmt: skip


def allowed_methods(request: Request) -> list[str]:
    """Return every method some route serves at this path, included routers' routes too.

    Starlette's 405 names only the first matching route's.
    """
    probe = {**request.scope, "method": "GET"}
    methods: set[str] = set()
    for route in _leaf_routes(request.app.router.routes):
        if route.matches(probe)[0] != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _leaf_routes(routes: Any) -> Iterator[Any]:
    for route in routes:
        nested = getattr(route, "routes", None) or getattr(
            getattr(route, "original_router", None), "routes", None
        )
        if nested:
            yield from _leaf_routes(nested)
        else:
            yield route


def register_error_handlers(app: FastAPI) -> None:
    """Every exception-to-status pair of the gateway, registered in this one function."""

    async def gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.GatewayError)
        count_error(exc.error_type, status_of(exc))
        request_id = request_id_of(request.scope)
        log_server_error(exc, request_id, f"{request.method} {request.url.path}")
        return render(exc, request.url.path, request_id)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        count_error("validation", 400)
        invalid = errors.RequestInvalidError(
            "the request does not match the schema", field_errors_from_pydantic(list(exc.errors()))
        )
        return render(invalid, request.url.path, request_id_of(request.scope))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        request_id = request_id_of(request.scope)
        if exc.status_code == 404:
            count_error("not_found", 404)
            return problem(
                404, "Not found", f"no route {path}", "not_found", path, None, request_id
            )
        count_error("http", exc.status_code)
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        if exc.status_code >= 500:
            log.error("%s %s -> %d: %s (request %s)", request.method, path, exc.status_code,
                      exc.detail, request_id)  # fmt: skip
        return problem(
            exc.status_code, "HTTP error", str(exc.detail), "http", path, headers, request_id
        )

    async def client_gone(request: Request, exc: Exception) -> Response:
        # Not a failure of the gateway: counted apart, answered with nginx's 499 (nobody reads it).
        count_error("cancelled", CLIENT_CLOSED)
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Reached only by apps without the access middleware (which answers these itself).
        return internal_error(request.scope, exc, request_id_of(request.scope), answer=True)

    app.add_exception_handler(errors.GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
