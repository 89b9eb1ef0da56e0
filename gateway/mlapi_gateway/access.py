"""Request ids and the access log: one ASGI middleware, outermost, for every HTTP request.

It gives each request an id (the caller's ``X-Request-ID`` when it is short and made of safe
characters, else a fresh one), echoes it in the response, leaves it in the request state for
the handlers (problem bodies, error logs, the request id sent to Triton), and writes one JSON
line per request on the ``mlapi.access`` logger once the answer has been sent. The API key is
never logged: only the key id that authentication left in the request state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlapi_gateway.metrics import CLIENT_CLOSED
from mlapi_gateway.problems import internal_error
from mlapi_gateway.request_id import HEADER_KEY, request_id_from

ACCESS_LOGGER = "mlapi.access"
access_log = logging.getLogger(ACCESS_LOGGER)


class AccessLogMiddleware:
    """Assigns the request id and writes the access log line (when ``enabled``).

    The line's fields: time (UTC, ISO 8601), request_id, key_id, method, route (the matched
    template, else ``unmatched``), path, model, version (the one Triton served), status
    (499 when the caller left first), latency_ms (until the last body byte was handed to the
    server), bytes_in and bytes_out (bodies only).
    """

    def __init__(self, app: ASGIApp, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        echoed = (HEADER_KEY, request_id.encode("ascii"))
        status = 0  # 0 until the response starts
        bytes_in = 0
        bytes_out = 0

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            bytes_in += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echoed]
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except asyncio.CancelledError:
            status = status or CLIENT_CLOSED
            raise
        except Exception as exc:
            # Unexpected: logged once here (traceback and request id) and answered with a
            # problem; not re-raised, so the server does not log the traceback a second time.
            # Once the answer has started, uvicorn closes the connection (and says so).
            response = internal_error(scope, exc, request_id, answer=status == 0)
            if not status:
                await response(scope, counting_receive, counting_send)
        finally:
            if self.enabled:
                write_line(scope, request_id, status or 500, start, bytes_in, bytes_out)


def write_line(
    scope: Scope, request_id: str, status: int, start: float, bytes_in: int, bytes_out: int
) -> None:
    """Write the access log line of a request answered with ``status`` (a no-op below INFO).

    ``start`` is the request's ``time.perf_counter()``; the route, the key id, the model and
    its served version come from the scope and its state. The predict shortcut
    (mlapi_gateway.fastpath) writes its lines through this function too.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    state = scope["state"]
    route = scope.get("route")
    line = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "request_id": request_id,
        "key_id": state.get("key_id"),
        "method": scope["method"],
        "route": getattr(route, "path", "unmatched"),
        "path": scope["path"],
        "model": state.get("model"),
        "version": state.get("model_version"),
        "status": status,
        "latency_ms": round((time.perf_counter() - start) * 1000, 3),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }
    text = orjson.dumps(line).decode()
    handler = _line_handler()
    if handler is not None:
        handler.write_line(text)
        return
    # The record info() would make, minus its caller lookup (a stack walk) and %-formatting:
    # the message is the JSON line itself.
    access_log.handle(_record(text))


def _record(text: str) -> logging.LogRecord:
    return access_log.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, text, (), None)


def _line_handler() -> LineHandler | None:
    """Return the access logger's one LineHandler, when nothing else would see its records.

    That is how logging_config sets it up. Any other arrangement (a filter, another handler,
    propagation to the root logger, as under pytest's caplog) gets the records themselves.
    """
    handlers = access_log.handlers
    if access_log.propagate or access_log.filters or len(handlers) != 1:
        return None
    handler = handlers[0]
    if (
        type(handler) is not LineHandler
        or handler.formatter is not handler.bare  # another format: the record's way
        or handler.filters
        or handler.level > logging.INFO
    ):
        return None
    return handler


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record's bare message as a line; ``write_line`` skips the record itself.

    A log record costs the access log about as much as the line it carries (the record's
    time, thread and process lookups, then its formatting), once per request.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.bare = logging.Formatter("%(message)s")
        self.setFormatter(self.bare)
        self._flush_scheduled = False

    def write_line(self, text: str) -> None:
        """Write ``text`` as emit() writes a record whose message it is; flush soon.

        On an event loop's thread the flush waits for the loop's next iteration, so the lines
        of every answer sent in one iteration leave in one system call, and none waits longer
        than the callbacks already queued. Elsewhere the line is flushed at once.
        """
        try:
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(text + self.terminator)
                if self._flush_scheduled:
                    return
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    self.stream.flush()
                    return
                self._flush_scheduled = True
            loop.call_soon(self._scheduled_flush)
        except Exception:
            self.handleError(_record(text))

    def _scheduled_flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_scheduled = False
        self.flush()


def logging_config(level: str) -> dict[str, Any]:
    """Return uvicorn's logging configuration plus the gateway's loggers.

    ``mlapi.access`` writes bare JSON lines to stdout, ``mlapi_gateway`` names level and logger
    on stderr.
    """
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {
        **LOGGING_CONFIG,
        "formatters": {**LOGGING_CONFIG["formatters"]},
        "handlers": {**LOGGING_CONFIG["handlers"]},
        "loggers": {**LOGGING_CONFIG["loggers"]},
    }
    config["formatters"]["mlapi_gateway"] = {
        "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"
    }
    config["handlers"]["mlapi_access"] = {
        "class": "mlapi_gateway.access.LineHandler",
        "stream": "ext://sys.stdout",
    }
    config["handlers"]["mlapi_gateway"] = {
        "class": "logging.StreamHandler",
        "formatter": "mlapi_gateway",
        "stream": "ext://sys.stderr",
    }
    config["loggers"][ACCESS_LOGGER] = {
        "handlers": ["mlapi_access"],
        "level": "INFO",
        "propagate": False,
    }
    config["loggers"]["mlapi_gateway"] = {
        "handlers": ["mlapi_gateway"],
        "level": level.upper(),
        "propagate": False,
    }
    return config
