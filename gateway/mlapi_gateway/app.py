"""The ASGI application: routes, error handlers, metrics middleware, lifespan."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from mlapi_gateway import routes
from mlapi_gateway.access import AccessLogMiddleware
from mlapi_gateway.cache.status import CacheHeaderMiddleware
from mlapi_gateway.cors import CorsMiddleware
from mlapi_gateway.jobs import routes as job_routes
from mlapi_gateway.metrics import MetricsMiddleware
from mlapi_gateway.openai import add_openai_routes
from mlapi_gateway.problems import register_error_handlers
from mlapi_gateway.ratelimit import RequestGuard
from mlapi_gateway.schemas import JobCreate, TensorAnswer, TensorPredict
from mlapi_gateway.services import Services
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.stream_tokens import add_stream_token_routes

# The core's bodies; each exposed model's adapter documents its own.
DOCUMENTED = (TensorPredict, TensorAnswer, JobCreate)


def create_app(
    settings: GatewaySettings | None = None, services: Services | None = None
) -> FastAPI:
    """Build the ASGI app; ``services`` (e.g. over a fake client) replace those of ``settings``.

    The app owns its services either way: its lifespan starts them and closes them.
    """
    settings = settings or (services.settings if services else GatewaySettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = services or Services.build(settings)
        app.state.services = svc
        await svc.inference.discover(settings.ready_timeout_s)
        svc.runner.start()
        try:
            yield
        finally:
            await svc.close()
            await openai_budgets.close()
            await stream_tokens.close()

    app = FastAPI(
        title="mlapi gateway",
        version="1",
        description="The API layer in front of Triton: auth, rate limits, validation, "
        "versioned predict routes, SSE relay of streaming models, async jobs with webhooks.",
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry: off. The gateway's own metrics and access log cover
        # every request; left on, FastAPI asks the global providers on every request (6 us).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    routes.add_routes(app)
    app.include_router(job_routes.router)
    openai_budgets = add_openai_routes(app, settings)
    stream_tokens = add_stream_token_routes(app, settings)
    register_error_handlers(app)
    # Innermost: X-Cache on the routes below the predict fast path (streams; a predict
    # answer says the same in its "cache" field).
    app.add_middleware(CacheHeaderMiddleware)
    app.add_middleware(routes.PredictFastPath, fastapi_app=app)
    app.add_middleware(RequestGuard, settings=settings)
    app.add_middleware(  # counts sheds too
        MetricsMiddleware, models=settings.models, protocol=settings.triton_infer_protocol
    )
    # Browser origins: preflights answered, unlisted origins refused, before any work.
    app.add_middleware(CorsMiddleware, settings=settings)
    # Outermost: every answer (sheds, 500s included) carries the request id and is logged.
    app.add_middleware(AccessLogMiddleware, enabled=settings.access_log)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, settings: GatewaySettings) -> dict[str, Any]:
    """Return the OpenAPI document: FastAPI's, completed by the gateway.

    It adds the bodies the routes validate themselves, the Bearer scheme and the error answers
    every route can give (problem+json). The models' bodies carry the limits their adapters
    last read, so the document is rebuilt when those change.
    """
    svc: Services | None = getattr(app.state, "services", None)
    adapters = list(svc.inference.adapters.values()) if svc else []
    # Cheap to compare on every call (the route is open to anyone): the limits the adapters
    # last read, not the schemas built from them.
    revision = tuple((adapter.name, adapter.revision()) for adapter in adapters)
    if app.openapi_schema and app.state.openapi_revision == revision:
        return app.openapi_schema
    documented: dict[str, dict[str, Any]] = {}
    for adapter in adapters:
        documented.update(adapter.documented_schemas())
    for model in DOCUMENTED:
        documented[model.__name__] = model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, body in copy.deepcopy(documented).items():
        schemas.update(body.pop("$defs", {}))
        schemas[name] = body
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, never sent here
        schemas.pop(name, None)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer": []}]
    paths = schema["paths"]
    for adapter in adapters:
        if adapter.typed:
            body_name, answer_name = adapter.body_schema.__name__, adapter.answer_schema.__name__
            _typed_paths(paths, adapter.name, body_name, answer_name)
    for path, operations in paths.items():
        for operation in operations.values():
            _document_errors(path, operation)
            for parameter in operation.get("parameters", ()):
                if parameter["name"] == "timeout_s":
                    bounds = {
                        "minimum": settings.deadline_min_s,
                        "maximum": settings.deadline_max_s,
                    }
                    parameter["schema"] = {"type": "number", **bounds}
    app.openapi_schema = schema
    app.state.openapi_revision = revision
    return schema


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem document",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string", "description": "the X-Request-ID of the request"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "expected": {"type": "string"},
                },
            },
        },
        "available": {"type": "array", "items": {"type": "string"}},
        "retry_after_s": {"type": "integer"},
    },
}
# One server-sent event: message (a TensorAnswer), then done ({"events": n}) or error (a problem).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["message", "done", "error"]},
        "id": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
RETRY_AFTER = {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}}
# Routes anyone may call; they never pass the guard or the limiter.
OPERATIONS_PATHS = ("/healthz", "/readyz", "/metrics")


def _typed_paths(paths: dict[str, Any], model: str, body: str, answer: str) -> None:
    """Concrete predict paths for a model with a typed adapter: its own body and answer.

    OpenAPI matches concrete paths before templated ones, so the generic tensor form stays
    documented for the other models.
    """
    for template in ("/v1/models/{model}/predict", "/v1/models/{model}/versions/{version}/predict"):
        operation = copy.deepcopy(paths[template]["post"])
        operation["operationId"] = f"{operation['operationId']}_{model}"
        operation["summary"] = f"{operation.get('summary', 'Predict')} ({model})"
        operation["parameters"] = [p for p in operation["parameters"] if p["name"] != "model"]
        operation["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{body}"
        }
        operation["responses"]["200"]["content"]["application/json"]["schema"] = {
            "$ref": f"#/components/schemas/{answer}"
        }
        paths[template.replace("{model}", model)] = {"post": operation}


def _problem(description: str, retry: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    if retry:
        answer["headers"] = RETRY_AFTER
    return answer


def _document_errors(path: str, operation: dict[str, Any]) -> None:
    """Add the answers the gateway's core gives on every route (auth, limits, body, overload)."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)
    if path in OPERATIONS_PATHS:
        operation["security"] = []
        if path == "/readyz":
            responses["503"] = _problem("Triton not ready or Redis down (names which)", retry=True)
        if path == "/metrics":
            responses["200"] = {
                "description": "Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        return
    if path.endswith("/stream"):
        responses["200"]["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
    errors_here = {
        "401": _problem("missing or invalid API key (WWW-Authenticate)"),
        "403": _problem("the key lacks the route's scope"),
        "429": _problem("rate limit or open-stream limit of the key (Retry-After)", retry=True),
        "503": _problem("Triton, the model or Redis unavailable, or the worker overloaded", True),
    }
    errors_here["404"] = _problem("unknown model, version or job (names what exists)")
    if "requestBody" in operation or operation.get("parameters"):
        errors_here["400"] = _problem("invalid request: per-field errors")
    if "requestBody" in operation:
        errors_here["408"] = _problem("the body arrived slower than body_timeout_s")
        errors_here["413"] = _problem("the body is over max_body_bytes")
    for status, answer in errors_here.items():
        current = responses.get(status)
        if current is None or "content" not in current:
            responses[status] = {**answer, "description": (current or answer)["description"]}
