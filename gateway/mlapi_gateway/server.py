"""uvicorn's httptools protocol: one socket write per answer, and the predict shortcut.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start``
and the body on ``http.response.body``: two ``send`` system calls per answer, each crossing
the kernel's TCP path (on loopback, the receiver's too). Here a write is held until the next
one, which joins it, or until the loop's next iteration: a whole answer leaves in one write,
and nothing waits longer than the current callback.

Predict calls are answered by mlapi_gateway.fastpath.PredictShortcut instead of the ASGI app,
in the same request cycle (uvicorn still parses, queues pipelined requests, streams the body
and keeps the connection alive); everything else goes to the ASGI app.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from mlapi_gateway.fastpath import PredictShortcut


class JoinedWrites:
    """A transport whose consecutive writes leave in one ``write`` of the one it wraps.

    A held write goes out with the next write, before ``close``, or at the loop's next
    iteration, whichever comes first; ``abort`` drops it with the connection. Everything
    else is the wrapped transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush_scheduled = False

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
            return
        self._held = None
        self._transport.write(b"".join((held, data)))

    def write_whole(self, data: bytes) -> None:
        """Write ``data``, a whole answer, now (after anything held): nothing will join it."""
        held, self._held = self._held, None
        self._transport.write(b"".join((held, data)) if held is not None else data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over JoinedWrites (``uvicorn.run(http=...)`` takes it).

    A predict call goes to the app's PredictShortcut when it has one, once its headers are in
    (pipelined ones when their turn comes, as uvicorn starts those).
    """

    shortcut_enabled = True  # False: every request goes to the ASGI app

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # JoinedWrites has every method of the transport (its own or the wrapped one's).
        super().connection_made(JoinedWrites(transport, self.loop))  # type: ignore[arg-type]

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        shortcut = self._shortcut(app)
        route = shortcut.match(cycle) if shortcut is not None else None
        if shortcut is None or route is None:
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(shortcut.run(cycle, route))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _shortcut(self, app: Any) -> PredictShortcut | None:
        if (
            not self.shortcut_enabled
            or app is not self.app  # e.g. uvicorn's 503 past limit_concurrency
            or getattr(self.config, "reset_contextvars", False)
        ):
            return None
        return PredictShortcut.of(app)
