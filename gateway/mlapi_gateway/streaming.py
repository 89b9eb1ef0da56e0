"""Server-sent events relay of a streaming (decoupled) model.

A producer task reads the Triton stream into a bounded queue; the response drains it. A slow
client fills the queue, the producer then stops reading (gRPC flow control pushes back on
Triton), and after ``sse_slow_client_s`` the stream is cancelled: memory stays bounded. Idle
periods send heartbeat comments. When the client goes away the response task is cancelled and
the producer's cancellation cancels the gRPC call, which Triton passes to the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from mlapi_gateway import errors
from mlapi_gateway.metrics import count_error
from mlapi_gateway.problems import log_server_error, problem_body, status_of
from mlapi_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
HEARTBEAT = b": heartbeat\n\n"
END = object()  # what next_within returns once a source is exhausted


def event(name: str, data: Any, event_id: int | None = None) -> bytes:
    """Return one server-sent event whose data is ``data`` as JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


async def next_within(source: AsyncIterator[Any], settings: GatewaySettings) -> Any:
    """Return the next item of ``source`` (``END`` at its end).

    Raise UnavailableError once the model has been silent for ``sse_idle_timeout_s``.
    """
    try:
        async with asyncio.timeout(settings.sse_idle_timeout_s):
            return await anext(source)
    except StopAsyncIteration:
        return END
    except TimeoutError as exc:
        raise errors.UnavailableError(
            f"the model sent nothing for {settings.sse_idle_timeout_s:g} s; the stream is "
            "closed, retry later",
            settings.retry_after_s,
        ) from exc


async def relay(
    source: AsyncIterator[dict[str, Any]],
    settings: GatewaySettings,
    request_id: str | None = None,
    where: str = "stream",
) -> AsyncIterator[bytes]:
    """Yield the SSE bytes of ``source``: message events, then done or an error event.

    An error event's data is the same problem document an HTTP error carries (with
    ``request_id``). A 5xx there is logged once, like any 5xx of the gateway; ``where`` names
    the request in that line.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=settings.sse_buffer_events)
    overflow = asyncio.Event()

    async def produce() -> None:
        try:
            while (item := await next_within(source, settings)) is not END:
                try:
                    await asyncio.wait_for(queue.put(("message", item)), settings.sse_slow_client_s)
                except TimeoutError:
                    overflow.set()
                    return
            await queue.put(("done", {}))
        except errors.GatewayError as exc:
            count_error(exc.error_type, status_of(exc))
            log_server_error(exc, request_id, where)
            await queue.put(("error", problem_body(exc, None, request_id)))
        finally:
            with contextlib.suppress(Exception):
                await source.aclose()  # type: ignore[attr-defined]

    producer = asyncio.create_task(produce())
    sent = 0
    try:
        while True:
            if overflow.is_set() and queue.empty():
                slow = errors.SlowClientError(
                    f"the client read too slowly (buffer of {settings.sse_buffer_events} "
                    "events full)"
                )
                count_error(slow.error_type, status_of(slow))
                yield event("error", problem_body(slow, None, request_id))
                return
            try:
                kind, item = await asyncio.wait_for(queue.get(), settings.sse_heartbeat_s)
            except TimeoutError:
                yield HEARTBEAT
                continue
            if kind == "message":
                yield event("message", item, sent)
                sent += 1
                continue
            yield event(kind, item if kind == "error" else {"events": sent})
            return
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer
