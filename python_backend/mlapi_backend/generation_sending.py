"""Hand a stream's responses to a background thread so that sending does not stall the others.

In the Python backend, ``response_sender.send`` returns only once the server process has taken
the response (a round trip between the stub and the server, about 0.2 ms each on the 2-core
development machine, measured inside text_generator). Called on the event loop, the sends of
16 streams took about half of every decode step. ``SendQueue`` runs them on one worker thread,
in the order they were made (so every stream's responses keep their order and the final flag
comes last), while the loop samples and batches the next step; the send releases the GIL
while it waits. Sending from another thread is what the backend's own decoupled examples do.

Generation must not outrun the thread: a stream that had queued many responses would reach
its client late and in bursts. ``caught_up`` lets the stream's coroutine wait until at most
``pending`` of its responses are still to be sent before it computes the next token, so one
send overlaps the next step and no backlog builds up.

``is_cancelled`` is a round trip too (about 0.06 ms). Once a stream has sent a response, the
worker asks it after each send and the loop reads the answer from a flag; before that (the
prompt) the loop asks the sender itself. A cancel is thus seen one send later at most.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# (request id, the exception a send raised)
SendFailed = Callable[[str, BaseException], None]


class QueuedSender:
    """A response sender whose ``send`` is queued; ``is_cancelled`` asks the real one."""

    def __init__(
        self, sender: Any, executor: ThreadPoolExecutor, on_error: SendFailed, request_id: str
    ) -> None:
        self.sender = sender
        self.executor = executor
        self.on_error = on_error
        self.request_id = request_id
        self.failed = threading.Event()
        self.cancelled = threading.Event()
        self.queued = 0
        self.in_flight: deque[Future[None]] = deque()

    def send(self, response: Any = None, flags: int = 0) -> None:
        """Queue one response (or the final flag alone) behind those sent before."""
        if not self.failed.is_set():
            self.queued += 1
            self.in_flight.append(self.executor.submit(self._send, response, flags))

    async def caught_up(self, pending: int = 1) -> None:
        """Wait until at most ``pending`` of this stream's responses are still to be sent."""
        while self.in_flight and self.in_flight[0].done():
            self.in_flight.popleft()
        while len(self.in_flight) > pending:
            await asyncio.wrap_future(self.in_flight.popleft())

    def is_cancelled(self) -> bool:
        """Whether the client cancelled the request (or a send to it failed)."""
        if self.failed.is_set() or self.cancelled.is_set():
            return True
        if self.queued == 0:
            return bool(self.sender.is_cancelled())
        return False

    def _send(self, response: Any, flags: int) -> None:
        if self.failed.is_set():
            return  # a send to this stream failed: what follows it cannot arrive either
        try:
            if response is None:
                self.sender.send(flags=flags)
            else:
                self.sender.send(response, flags=flags)
            if not flags and self.sender.is_cancelled():
                self.cancelled.set()
        except Exception as exc:  # reported once; the stream's generation then stops
            self.failed.set()
            self.on_error(self.request_id, exc)


class SendQueue:
    """One worker thread sending the responses of all of a model instance's streams in order."""

    def __init__(self, on_error: SendFailed) -> None:
        self.on_error = on_error
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="response-send")

    def sender(self, sender: Any, request_id: str) -> QueuedSender:
        """Wrap one request's response sender."""
        return QueuedSender(sender, self.executor, self.on_error, request_id)

    def close(self) -> None:
        """Send what is queued, then stop the thread (the model's finalize)."""
        self.executor.shutdown(wait=True)
