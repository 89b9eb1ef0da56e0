"""Model routes (list, predict, versioned predict, stream) and operational routes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from mlapi_gateway import errors
from mlapi_gateway.adapters import ModelAdapter
from mlapi_gateway.cache.status import outcome_of
from mlapi_gateway.metrics import COST_HEADER, count_cost, exposition
from mlapi_gateway.request_id import request_id_of
from mlapi_gateway.schemas import ModelList, TensorPredict, parse_as
from mlapi_gateway.services import read_body, services
from mlapi_gateway.streaming import END, next_within, relay

# The predict handlers read the query and path themselves (FastAPI's parameter solving cost
# ~0.3 ms a request in a profile of the 1-connection benchmark); the docs still list them.
TIMEOUT_PARAMETER = {
    "name": "timeout_s",
    "in": "query",
    "required": False,
    "schema": {"type": "number"},
    "description": "per-request deadline in seconds, within the gateway's bounds",
}
PREDICT_BODY = {
    "parameters": [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
        TIMEOUT_PARAMETER,
    ],
    # Tensors by name; models with a typed adapter get paths of their own in the document.
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TensorPredict"}}},
    },
}
VERSION_PREDICT_BODY = {
    **PREDICT_BODY,
    "parameters": [
        *PREDICT_BODY["parameters"],
        {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}},
    ],
}
STREAM_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TensorPredict"}}},
    }
}
# Descriptions in /openapi.json as published, where the docstring now reads otherwise.
VERSION_PREDICT_DESCRIPTION = (
    "Like predict, pinned to ``version`` (digits: the classifier version)."
)
READYZ_DESCRIPTION = (
    "Readiness: Triton is ready and Redis (when configured) answers; 503 with Retry-After\n"
    "naming what is not."
)
LIST_MODELS_DESCRIPTION = "The exposed models with their live and default versions."
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the output tensors; X-Model-Version names the served version",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TensorAnswer"}}},
    },
    400: {"description": "invalid request (problem+json with field errors)"},
    401: {"description": "missing or invalid API key"},
    403: {"description": "the key lacks the predict scope"},
    404: {"description": "unknown model or version (names what exists)"},
    429: {"description": "rate limited (Retry-After)"},
    503: {"description": "Triton or the model is not ready (Retry-After)"},
    504: {"description": "deadline exceeded: smaller input or POST /v1/jobs"},
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Return ``body`` as a JSON response (orjson)."""
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


async def healthz() -> dict[str, str]:
    """Liveness: the gateway process answers."""
    return {"status": "ok"}


async def readyz(request: Request) -> Response:
    """Answer 200 once Triton is ready and Redis (when configured) answers, else 503."""
    svc = services(request)
    timeout_s = svc.settings.ready_timeout_s

    async def triton_ready() -> bool:
        # Health is open; the repository index needs the access key, so a refused key shows here.
        client = svc.inference.client
        try:
            with svc.inference.translated("*"):
                if not await client.is_ready(timeout_s=timeout_s, retry=False):
                    return False
                await client.list_models(timeout_s=timeout_s, retry=False)
                return True
        except errors.GatewayError:
            return False

    async def redis_ready() -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                return await svc.limiter.ready()
        except TimeoutError:
            return False

    triton, redis = await asyncio.gather(triton_ready(), redis_ready())
    failing = [name for name, ok in (("Triton", triton), ("Redis", redis)) if not ok]
    if failing:
        raise errors.UnavailableError(
            f"not ready: {' and '.join(failing)}", svc.settings.retry_after_s
        )
    return json_response({"status": "ready"})


async def metrics() -> Response:
    """Prometheus metrics of the gateway."""
    payload, content_type = exposition()
    return Response(payload, media_type=content_type)


async def list_models(request: Request) -> Response:
    """List the exposed models with their live and default versions."""
    svc = services(request)
    await svc.gate.admit(request, "predict")
    return json_response({"models": await svc.inference.list_models()})


def _timeout_s(request: Request) -> float | None:
    if not request.scope["query_string"]:  # the usual call: no query string to parse
        return None
    raw = request.query_params.get("timeout_s")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise errors.RequestInvalidError(
            "timeout_s is not a number",
            [errors.FieldError("query.timeout_s", f"got {raw!r}", "a number of seconds")],
        ) from exc


async def serve_predict(request: Request, version: str | None) -> Response:
    """Answer a predict call of the model in the path, pinned to ``version`` when given.

    Both predict routes and the predict shortcut (mlapi_gateway.fastpath) answer through it.
    """
    svc = services(request)
    model = request.path_params["model"]
    await svc.gate.admit(request, "predict")
    adapter = svc.inference.adapter(model)
    request.state.model = model  # a metrics label: only once the caller and the model are known
    deadline_s = svc.inference.deadline(_timeout_s(request))
    body = adapter.parse(await read_body(request))
    answer = await adapter.predict(body, version, deadline_s, request_id_of(request.scope))
    served = str(answer["model_version"])
    request.state.model_version = served
    headers = {"X-Model-Version": served}
    cached = outcome_of(answer.get("cache"))
    if cached is not None:
        headers["X-Cache"] = cached
    cost = count_cost(answer, model, served, request.state.key_id)
    if cost is not None:
        headers[COST_HEADER] = cost
    return json_response(answer, headers=headers)


async def predict(request: Request) -> Response:
    """Run ``model`` on one input. digits: ``{"image": base64}`` or ``{"pixels": rows}``, ``top_k``."""
    return await serve_predict(request, None)


async def predict_version(request: Request) -> Response:
    """Run ``model`` pinned to ``version`` (see VERSION_PREDICT_DESCRIPTION)."""
    return await serve_predict(request, request.path_params["version"])


class DirectRoute(APIRoute):
    """An APIRoute, documented in /openapi.json like any other, whose endpoint is called directly.

    For endpoints that take the Request, read it themselves and return a Response: FastAPI's
    dependency solving, its per-request exit stacks and the route-level exception wrapper are
    skipped (with the routes on the app's own router, about 48 us of the gateway's 248 us per
    digits predict, measured in-process with Triton stubbed). Errors still reach the app's
    handlers, through ExceptionMiddleware, so their answers do not change.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # 405, as for any route
            return
        response = await self.endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


class PredictFastPath:
    """Pure ASGI middleware, innermost: a predict call goes from the guard to its endpoint.

    POST /v1/models/{model}/predict and its versioned form skip the router's scan of every
    route and FastAPI's per-request layers (exit stack, router telemetry); their own routes
    still match them (scope gets the same route, endpoint and path parameters) and the app's
    exception handlers answer their errors (the app's ExceptionMiddleware, rebuilt around
    the endpoint), so their answers do not change. Everything else goes down the stack.
    (Measured in-process over a fake Triton, interleaved: 238 us a predict instead of 271.)
    """

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self._routes: list[DirectRoute] | None = None
        self._handled: ASGIApp | None = None
        self._handlers: dict[Any, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith("/predict")
            and not scope.get("root_path")
        ):
            child_scope = self.match(scope)
            if child_scope is not None:
                assert self._handled is not None
                scope.setdefault("router", self.fastapi_app.router)
                scope.update(child_scope)
                await self._handled(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def match(self, scope: Scope) -> Scope | None:
        """Return what a predict route that fully matches ``scope`` adds to it, else None."""
        if self._routes is None:  # routes and handlers are all registered by now
            self._prepare()
        assert self._routes is not None
        for route in self._routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return child_scope
        return None

    def handler(self, exc: Exception) -> Callable[[Request, Exception], Any] | None:
        """Return the app's handler of ``exc`` (by class, nearest first), as the router's path has.

        None for what only ServerErrorMiddleware answers (500 and Exception).
        """
        if self._handlers is None:
            self._prepare()
        assert self._handlers is not None
        for cls in type(exc).__mro__:
            found = self._handlers.get(cls)
            if found is not None:
                return found  # type: ignore[no-any-return]
        return None

    def _prepare(self) -> None:
        app = self.fastapi_app
        self._routes = [r for r in app.router.routes if isinstance(r, DirectRoute)]
        # As FastAPI's stack: 500 and Exception belong to ServerErrorMiddleware, not here.
        handlers = {k: v for k, v in app.exception_handlers.items() if k not in (500, Exception)}
        self._handlers = handlers
        self._handled = ExceptionMiddleware(_endpoint, handlers=handlers, debug=app.debug)


async def _endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """Call a DirectRoute's endpoint matched by PredictFastPath and send its response."""
    response = await scope["endpoint"](Request(scope, receive, send))
    await response(scope, receive, send)


class HeldStream(StreamingResponse):
    """A StreamingResponse that gives its caller's stream slot back however it ends."""

    def __init__(self, content: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def stream(request: Request, model: str) -> StreamingResponse:
    """Relay a streaming model's responses as server-sent events as they are generated."""
    svc = services(request)
    caller = (await svc.gate.admit(request, "predict")).id
    adapter = svc.inference.adapter(model)
    request.state.model = model
    svc.streams.acquire(caller)
    try:
        body = parse_as(TensorPredict, await read_body(request))
        assert isinstance(body, TensorPredict)
        await svc.inference.contract(model)  # 404/503 before the stream starts
    except BaseException:
        svc.streams.release(caller)
        raise
    return await event_stream(request, adapter, body, lambda: svc.streams.release(caller))


async def event_stream(
    request: Request, adapter: ModelAdapter, body: TensorPredict, release: Callable[[], None]
) -> StreamingResponse:
    """Start ``body``'s stream on ``adapter`` and relay it as server-sent events.

    The caller holds a stream slot; ``release`` gives it back however the stream ends (also
    when it fails to start). The first item is pulled eagerly, so a refused request
    (400/404/503) is an HTTP error, not an event.
    """
    svc = services(request)
    try:
        source = adapter.stream(
            body, None, svc.settings.sse_max_duration_s, request_id_of(request.scope)
        )
        try:
            first = await next_within(source, svc.settings)
        except BaseException:
            await source.aclose()
            raise
    except BaseException:
        release()
        raise

    async def chained() -> Any:
        try:
            if first is not END:
                yield first
                async for item in source:
                    yield item
        finally:
            await source.aclose()  # cancels the gRPC call when the client left early

    where = f"{request.method} {request.url.path}"
    return HeldStream(
        relay(chained(), svc.settings, request_id_of(request.scope), where),
        release,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def add_routes(app: FastAPI) -> None:
    """Add the model and operations routes, in the order /openapi.json lists them.

    They go straight onto the app's router: an included router (include_router) matches every
    request twice over all of its routes before it hands the request on.
    """
    add = app.router.add_api_route
    add("/healthz", healthz, methods=["GET"], tags=["operations"])
    add("/readyz", readyz, methods=["GET"], tags=["operations"], description=READYZ_DESCRIPTION)
    add("/metrics", metrics, methods=["GET"], tags=["operations"])
    add(
        "/v1/models",
        list_models,
        methods=["GET"],
        tags=["models"],
        response_model=ModelList,
        description=LIST_MODELS_DESCRIPTION,
    )
    for path, endpoint, extra, description in (
        ("/v1/models/{model}/predict", predict, PREDICT_BODY, None),
        (
            "/v1/models/{model}/versions/{version}/predict",
            predict_version,
            VERSION_PREDICT_BODY,
            VERSION_PREDICT_DESCRIPTION,
        ),
    ):
        add(
            path,
            endpoint,
            methods=["POST"],
            tags=["models"],
            description=description,
            openapi_extra=extra,
            responses=PREDICT_RESPONSES,
            route_class_override=DirectRoute,
        )
    add(
        "/v1/models/{model}/stream",
        stream,
        methods=["POST"],
        tags=["models"],
        openapi_extra=STREAM_BODY,
        responses={200: {"description": "text/event-stream: message events, then done or error"}},
    )
