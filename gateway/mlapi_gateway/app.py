"""The ASGI application: routes, error handlers, metrics middleware, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from mlapi_gateway import routes
from mlapi_gateway.jobs import routes as job_routes
from mlapi_gateway.metrics import MetricsMiddleware
from mlapi_gateway.problems import register_error_handlers
from mlapi_gateway.schemas import (
    DigitsAnswer,
    DigitsPredict,
    JobCreate,
    TensorAnswer,
    TensorPredict,
)
from mlapi_gateway.services import Services
from mlapi_gateway.settings import GatewaySettings

DOCUMENTED = (DigitsPredict, TensorPredict, DigitsAnswer, TensorAnswer, JobCreate)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = Services.build(settings)
        app.state.services = svc
        svc.runner.start()
        try:
            yield
        finally:
            await svc.close()

    app = FastAPI(
        title="mlapi gateway",
        version="1",
        description="The API layer in front of Triton: auth, rate limits, validation, "
        "versioned predict routes, SSE relay of streaming models, async jobs with webhooks.",
        lifespan=lifespan,
    )
    routes.add_routes(app)
    app.include_router(job_routes.router)
    register_error_handlers(app)
    app.add_middleware(MetricsMiddleware)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the bodies the routes validate themselves and the Bearer scheme."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in DOCUMENTED:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[model.__name__] = body
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer": []}]
    app.openapi_schema = schema
    return schema
