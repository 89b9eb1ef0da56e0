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
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + error_type.replace("_", "-"),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
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
    (errors.BodyTooLarge, 413),
    (errors.RequestInvalid, 400),
    (errors.BodyTimeout, 408),
    (errors.AuthenticationRequired, 401),
    (errors.ScopeMissing, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.RateLimited, 429),
    (errors.ModelFailed, 502),
    (errors.Unavailable, 503),
    (errors.DeadlineExceeded, 504),
)


def status_of(error: errors.GatewayError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 500


def problem_body(error: errors.GatewayError, instance: str | None = None) -> dict[str, Any]:
    """The problem document of a gateway error as a dict (HTTP answers and SSE error events)."""
    status = status_of(error)
    body: dict[str, Any] = {
        "type": TYPE_BASE + error.error_type.replace("_", "-"),
        "title": error.title,
        "status": status,
        "detail": error.detail,
    }
    if instance:
        body["instance"] = instance
    if isinstance(error, errors.RequestInvalid):
        body["errors"] = [e.to_dict() for e in error.errors]
    if isinstance(error, errors.NotFound) and error.available is not None:
        body["available"] = error.available
    if isinstance(error, (errors.RateLimited, errors.Unavailable)):
        body["retry_after_s"] = error.retry_after_s
    return body


def render(error: errors.GatewayError, instance: str | None = None) -> Response:
    """The problem response for a gateway error (also used by the job runner for results)."""
    headers: dict[str, str] = {}
    if isinstance(error, (errors.RateLimited, errors.Unavailable)):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, errors.AuthenticationRequired):
        headers["WWW-Authenticate"] = 'Bearer realm="mlapi"'
    body = problem_body(error, instance)
    return Response(orjson.dumps(body), body["status"], headers=headers, media_type=PROBLEM_JSON)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route's;
    an included router's routes count too)."""
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
        count_error(exc.error_type)
        return render(exc, request.url.path)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        count_error("validation")
        invalid = errors.RequestInvalid(
            "the request does not match the schema", field_errors_from_pydantic(list(exc.errors()))
        )
        return render(invalid, request.url.path)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        if exc.status_code == 404:
            count_error("not_found")
            return problem(404, "Not found", f"no route {path}", "not_found", path)
        count_error("http")
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem(exc.status_code, "HTTP error", str(exc.detail), "http", path, headers)

    async def client_gone(request: Request, exc: Exception) -> Response:
        # Not a failure of the gateway: counted apart, answered with nginx's 499 (nobody reads it).
        count_error("cancelled")
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # The traceback goes to the log, never to the client.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        count_error("internal")
        return problem(500, "Internal error", "the gateway failed; see its log", "internal")

    app.add_exception_handler(errors.GatewayError, gateway_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
