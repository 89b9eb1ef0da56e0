"""One socket write per answer: JoinedWrites over a recording transport, and a real uvicorn."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlapi_gateway.server import HttpProtocol, JoinedWrites


class Recorder:
    """The transport calls JoinedWrites passes on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", None))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 5

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def _joined() -> tuple[Recorder, JoinedWrites, asyncio.AbstractEventLoop]:
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    return recorder, JoinedWrites(recorder, loop), loop  # type: ignore[arg-type]


async def _next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_a_head_and_its_body_leave_in_one_write() -> None:
    async def scenario() -> None:
        recorder, joined, _ = _joined()
        joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert recorder.calls == []  # held for its body
        assert joined.get_write_buffer_size() == 5 + 19
        joined.write(bytearray(b"body"))
        assert recorder.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody")]
        await _next_iteration()  # the scheduled flush finds nothing left
        assert recorder.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody")]

    asyncio.run(scenario())


def test_a_lone_write_leaves_at_the_next_loop_iteration() -> None:
    async def scenario() -> None:
        recorder, joined, _ = _joined()
        joined.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await _next_iteration()
        assert recorder.calls == [("write", b"HTTP/1.1 100 Continue\r\n\r\n")]
        joined.write(b"event 1")  # a stream's chunks: each one leaves, joined or alone
        joined.write(b"event 2")
        joined.write(b"event 3")
        await _next_iteration()
        assert [data for _, data in recorder.calls[1:]] == [b"event 1event 2", b"event 3"]

    asyncio.run(scenario())


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def scenario() -> None:
        recorder, joined, _ = _joined()
        joined.write(b"last answer")
        joined.close()
        assert recorder.calls == [("write", b"last answer"), ("close", None)]
        await _next_iteration()
        assert len(recorder.calls) == 2

        recorder, joined, _ = _joined()
        joined.write(b"never sent")
        joined.abort()
        await _next_iteration()
        assert recorder.calls == [("abort", None)]

    asyncio.run(scenario())


def test_nothing_is_written_once_the_transport_is_closing() -> None:
    async def scenario() -> None:
        recorder, joined, _ = _joined()
        joined.write(b"late")
        recorder.closing = True  # the peer went away
        await _next_iteration()
        assert recorder.calls == []
        assert joined.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is delegated

    asyncio.run(scenario())


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await receive()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


class Counting:
    """A real transport whose writes are recorded."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _socket_writes(protocol: type[HttpToolsProtocol], answers: int) -> list[bytes]:
    """What a real uvicorn with ``protocol`` writes to the socket for keep-alive answers."""
    writes: list[bytes] = []

    class Recorded(protocol):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(Counting(transport, writes))

    async def scenario() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            _app, http=Recorded, loop="none", log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                await asyncio.sleep(0.01)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(answers):
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                assert await reader.readexactly(5) == b"hello"
            writer.close()
            await writer.wait_closed()
        finally:
            server.should_exit = True
            await serving

    uvloop.run(scenario())
    return writes


def test_uvicorn_writes_each_answer_once() -> None:
    """Through a real uvicorn server: stock httptools writes head and body apart, ours once."""
    stock = _socket_writes(HttpToolsProtocol, 3)
    assert len(stock) == 6 and all(not w.startswith(b"HTTP/") for w in stock[1::2])
    ours = _socket_writes(HttpProtocol, 3)
    assert len(ours) == 3
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b"\r\n\r\nhello") for w in ours)


def test_a_whole_answer_leaves_at_once_after_what_is_held() -> None:
    async def scenario() -> None:
        recorder, joined, _ = _joined()
        joined.write_whole(b"answer 1")  # nothing held: written as is, now
        assert recorder.calls == [("write", b"answer 1")]
        joined.write(b"held")
        joined.write_whole(b"answer 2")
        assert recorder.calls[1:] == [("write", b"heldanswer 2")]
        await _next_iteration()  # the scheduled flush finds nothing left
        assert len(recorder.calls) == 2

    asyncio.run(scenario())
