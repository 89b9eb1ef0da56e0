"""The predict shortcut: predict calls answered at uvicorn's protocol, around the ASGI stack.

``POST /v1/models/{model}/predict`` and its versioned form carry nearly all of the gateway's
traffic. Through ASGI each one crosses every middleware (each wrapping ``send`` and
``receive``), uvicorn's ASGI cycle and a Starlette response. Here the HTTP protocol
(mlapi_gateway.server) hands such a request to ``PredictShortcut.run``, which does the work
of those layers with their own code, inline: the request id and the access line
(mlapi_gateway.access), the samples (MetricsMiddleware.observe), the shed and the body limit
(RequestGuard.refusal, the same in-flight count), the route's match and endpoint with the
app's exception handlers (routes.PredictFastPath), then one write of the whole answer.

Anything else goes to the ASGI app unchanged: other routes, a request whose answer the
shortcut could not give the same way (CORS's ``Origin``, proxy headers, ``Expect``, a body
without a Content-Length, HTTP/1.0, a root path), and every request of an app whose stack
holds a layer the shortcut does not stand in for.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from mlapi_gateway.access import AccessLogMiddleware, write_line
from mlapi_gateway.metrics import CLIENT_CLOSED, MetricsMiddleware
from mlapi_gateway.problems import internal_error
from mlapi_gateway.ratelimit import CLOSE, RequestGuard, declared_body
from mlapi_gateway.request_id import HEADER_KEY, request_id_from
from mlapi_gateway.routes import PredictFastPath

log = logging.getLogger(__name__)
# Headers whose request the ASGI app answers: CORS (Origin), uvicorn's proxy headers (they
# change the client and scheme), a body of unknown length, 100-continue, upgrades.
FALLBACK_HEADERS = frozenset(
    (b"origin", b"x-forwarded-for", b"x-forwarded-proto", b"transfer-encoding", b"expect",
     b"upgrade")
)  # fmt: skip
# Layers above PredictFastPath that change nothing of a predict request without those
# headers: Starlette's last-resort 500 (the access middleware answers every exception first),
# CORS middlewares (they act on requests with an Origin only), and FastAPI's exception
# telemetry and app body limit (passive while its telemetry is off and max_body_size is
# None: with a limit, Starlette's RequestBodyLimitMiddleware comes next, and the shortcut is
# off). By name where the class is private or optional.
PASSIVE_LAYERS = (ServerErrorMiddleware, CORSMiddleware)
PASSIVE_LAYER_NAMES = frozenset(
    ("fastapi.telemetry._asgi.ExceptionTelemetryMiddleware",
     "fastapi._body_limit.AppBodyLimitMiddleware",
     "mlapi_gateway.cors.CorsMiddleware")
)  # fmt: skip
# uvicorn's own check of a header value before it writes it (a response must not split).
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_STATE_KEY = "predict_shortcut"


class PredictShortcut:
    """Answers predict requests of one app as its ASGI stack would, with that stack's parts."""

    def __init__(
        self,
        app: FastAPI,
        access: AccessLogMiddleware,
        metrics: MetricsMiddleware,
        guard: RequestGuard,
        predict: PredictFastPath,
    ) -> None:
        self.app = app
        self.access = access
        self.metrics = metrics
        self.guard = guard
        self.predict = predict

    @classmethod
    def of(cls, loaded: Any) -> PredictShortcut | None:
        """Return the shortcut of the app uvicorn serves, or None where it must not be used.

        None until the app has started (its middleware stack built, its services up), and
        for good when the stack holds a layer the shortcut does not stand in for.
        """
        app = loaded.app if isinstance(loaded, ProxyHeadersMiddleware) else loaded
        if not isinstance(app, FastAPI) or app.middleware_stack is None:
            return None
        found: PredictShortcut | bool | None = getattr(app.state, _STATE_KEY, False)
        if not isinstance(found, bool):
            return found
        if getattr(app.state, "services", None) is None:
            return None  # the lifespan has not started the services yet
        shortcut = cls._assemble(app)
        if shortcut is None:
            log.info("predict shortcut off: the app's middleware has layers it would skip")
        setattr(app.state, _STATE_KEY, shortcut)
        return shortcut

    @classmethod
    def _assemble(cls, app: FastAPI) -> PredictShortcut | None:
        if app.root_path:  # FastAPI puts it in every scope: the routes match below it
            return None
        parts: dict[type, Any] = {}
        layer: Any = app.middleware_stack
        while not isinstance(layer, PredictFastPath):
            kind = type(layer)
            if kind in (AccessLogMiddleware, MetricsMiddleware, RequestGuard):
                parts[kind] = layer
            elif not (
                isinstance(layer, PASSIVE_LAYERS)
                or f"{kind.__module__}.{kind.__qualname__}" in PASSIVE_LAYER_NAMES
            ):
                return None
            layer = getattr(layer, "app", None)
        if len(parts) != 3:
            return None
        return cls(
            app, parts[AccessLogMiddleware], parts[MetricsMiddleware], parts[RequestGuard], layer
        )

    def _traced(self) -> bool:
        # Whether FastAPI's native OpenTelemetry would record the request: it asks the global
        # providers (6 us a call) unless the app's telemetry config turns it off.
        telemetry = getattr(self.app, "_native_telemetry", None)
        return bool(telemetry is not None and telemetry.enabled())

    def match(self, cycle: RequestResponseCycle) -> Scope | None:
        """Return what its predict route adds to the scope of ``cycle``, or None.

        None unless the request is a predict call this shortcut answers as the app would.
        """
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        path = scope["path"]
        if (
            scope["method"] != "POST"
            or not path.endswith("/predict")
            or not path.startswith("/v1/models/")
            or scope["http_version"] != "1.1"
            or scope["root_path"]
            or cycle.waiting_for_100_continue
            or self._traced()
        ):
            return None
        sized = False
        for name, _ in scope["headers"]:
            if name in FALLBACK_HEADERS:
                return None
            if name == b"content-length":
                sized = True
        return self.predict.match(scope) if sized else None

    async def run(self, cycle: RequestResponseCycle, route: Scope) -> None:
        """Answer the request of ``cycle`` (``route``: what match() gave).

        An error of the answer's write closes the connection.
        """
        try:
            await self._serve(cycle, route)
        except Exception as exc:  # as uvicorn's cycle does for an ASGI app
            log.error("predict shortcut failed after its answer started", exc_info=exc)
            cycle.transport.close()

    async def _serve(self, cycle: RequestResponseCycle, route: Scope) -> None:
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        start = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        scope["state"]["request_id"] = request_id
        body = _Reading(cycle)
        status = CLIENT_CLOSED  # until there is an answer
        bytes_out = 0
        try:
            response, closing = await self._respond(scope, route, body, request_id, start)
            status = response.status_code
            headers = [*response.raw_headers, *closing, (HEADER_KEY, request_id.encode("ascii"))]
            payload = bytes(response.body)
            bytes_out = len(payload)
            await _write(cycle, status, headers, payload)
        finally:
            if self.access.enabled:
                write_line(scope, request_id, status, start, body.bytes_in, bytes_out)

    async def _respond(
        self, scope: dict[str, Any], route: Scope, body: _Reading, request_id: str, start: float
    ) -> tuple[Response, list[tuple[bytes, bytes]]]:
        """Return the answer and the headers the guard adds to it; record its samples."""
        state = scope["state"]
        closing: list[tuple[bytes, bytes]] = []
        try:
            declared = declared_body(scope)
            response = self.guard.refusal(scope, declared)
            if response is None:
                response = await self._answer(scope, route, body)
                if declared != 0 and not body.done:
                    closing.append(CLOSE)  # as the guard: an unread body is never read
        except asyncio.CancelledError:
            self.metrics.observe(scope.get("route"), state, CLIENT_CLOSED, _since(start))
            raise
        except Exception as exc:
            # As the access middleware: logged once, answered with a problem (counted there).
            self.metrics.observe(scope.get("route"), state, 500, _since(start))
            return internal_error(scope, exc, request_id, answer=True), []
        self.metrics.observe(scope.get("route"), state, response.status_code, _since(start))
        return response, closing

    async def _answer(self, scope: dict[str, Any], route: Scope, body: _Reading) -> Response:
        """Return the route's answer, or the app's handler's of its error (counted in flight)."""
        scope["app"] = self.app
        scope.setdefault("router", self.app.router)
        scope.update(route)
        request = Request(scope, body.receive)
        self.guard.in_flight += 1
        try:
            try:
                response: Response = await scope["endpoint"](request)
            except Exception as exc:
                handler = self.predict.handler(exc)
                if handler is None:
                    raise
                response = await handler(request, exc)
            return response
        finally:
            self.guard.in_flight -= 1


class _Reading:
    """The cycle's ``receive``, counting body bytes and noting when the body has been read."""

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._receive = cycle.receive
        self.bytes_in = 0
        self.done = False

    async def receive(self) -> Message:
        message: Message = await self._receive()  # type: ignore[assignment]
        self.bytes_in += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.done = True
        return message


async def _write(
    cycle: RequestResponseCycle, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Send a whole answer in one write and complete the cycle, as its ``send`` would.

    Written against uvicorn 0.54's RequestResponseCycle (tests/unit/gateway/test_protocol_*
    drive it through a real server): flow control, keep-alive and ``connection: close``,
    then ``on_response``, which starts a pipelined request or arms the keep-alive timer.
    """
    if cycle.flow.write_paused and not cycle.disconnected:
        await cycle.flow.drain()
    if cycle.disconnected:
        return
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    content = [STATUS_LINE[status]]
    closing = False
    for name, value in (*cycle.default_headers, *headers):
        if _BAD_VALUE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
        if name == b"connection" and b"close" in value.lower():
            closing = True
        content.extend((name, b": ", value, b"\r\n"))
    if closing:
        cycle.keep_alive = False
    elif not cycle.keep_alive:
        content.append(b"connection: close\r\n")
    content.extend((b"\r\n", body))
    # JoinedWrites (mlapi_gateway.server) would hold a lone write to the next loop iteration.
    write = getattr(cycle.transport, "write_whole", cycle.transport.write)
    write(b"".join(content))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()


def _since(start: float) -> float:
    return time.perf_counter() - start
