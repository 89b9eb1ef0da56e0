"""The SSE relay's logic with an in-process source: order, heartbeats, errors, slow clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from mlapi_gateway import errors
from mlapi_gateway.problems import TYPE_BASE, problem_body
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.streaming import HEARTBEAT, relay


def _settings(**overrides: Any) -> GatewaySettings:
    base = {"sse_heartbeat_s": 0.05, "sse_buffer_events": 4, "sse_slow_client_s": 0.2}
    return GatewaySettings(**{**base, **overrides})


class Source:
    def __init__(self, count: int, delay_s: float = 0.0, fail: bool = False) -> None:
        self.count, self.delay_s, self.fail = count, delay_s, fail
        self.produced = 0
        self.closed = False

    async def _gen(self) -> AsyncIterator[dict[str, Any]]:
        try:
            for index in range(self.count):
                await asyncio.sleep(self.delay_s)
                self.produced += 1
                yield {"index": index}
            if self.fail:
                raise errors.UnavailableError("gone", 1)
        finally:
            self.closed = True

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._gen()


async def _collect(stream: AsyncIterator[bytes], limit: int = 1000) -> list[bytes]:
    out = []
    async for chunk in stream:
        out.append(chunk)
        if len(out) >= limit:
            break
    return out


def test_events_then_done() -> None:
    chunks = asyncio.run(_collect(relay(aiter(Source(3)), _settings())))
    names = [next(line for line in c.split(b"\n") if line.startswith(b"event: ")) for c in chunks]
    assert names == [b"event: message"] * 3 + [b"event: done"]
    assert chunks[0].startswith(b"id: 0\n")


def test_heartbeats_while_idle() -> None:
    chunks = asyncio.run(_collect(relay(aiter(Source(2, delay_s=0.2)), _settings())))
    assert HEARTBEAT in chunks
    assert chunks[-1].startswith(b"event: done")


def _problem_of(chunk: bytes) -> dict[str, Any]:
    data = next(line for line in chunk.split(b"\n") if line.startswith(b"data: "))
    return orjson.loads(data[len(b"data: ") :])  # type: ignore[no-any-return]


def test_errors_end_the_stream_with_an_error_event() -> None:
    """The event's data is the problem document an HTTP 503 carries, with the request id."""
    chunks = asyncio.run(_collect(relay(aiter(Source(1, fail=True)), _settings(), "req-7")))
    assert chunks[-1].startswith(b"event: error")
    assert _problem_of(chunks[-1]) == problem_body(
        errors.UnavailableError("gone", 1), None, "req-7"
    )
    assert _problem_of(chunks[-1]) == {
        "type": TYPE_BASE + "unavailable",
        "title": "Model unavailable",
        "status": 503,
        "detail": "gone",
        "request_id": "req-7",
        "retry_after_s": 1,
    }


def test_a_slow_client_cannot_grow_the_buffer() -> None:
    source = Source(1000)

    async def slow_reader() -> list[bytes]:
        out = []
        async for chunk in relay(aiter(source), _settings(), "req-8"):
            out.append(chunk)
            await asyncio.sleep(0.5 if len(out) == 1 else 0)
        return out

    chunks = asyncio.run(slow_reader())
    assert chunks[-1].startswith(b"event: error")
    problem = _problem_of(chunks[-1])
    assert problem["type"] == TYPE_BASE + "slow-client" and problem["title"] == "Slow client"
    assert problem["status"] == 499 and "too slowly" in problem["detail"]
    assert problem["request_id"] == "req-8"
    assert source.produced <= 4 + 2  # the buffer plus the items in flight, not 1000
    assert source.closed


def test_leaving_early_closes_the_source() -> None:
    source = Source(1000, delay_s=0.01)

    async def leave() -> None:
        stream = relay(aiter(source), _settings())
        await _collect(stream, limit=2)
        await stream.aclose()  # what Starlette does when the client disconnects
        await asyncio.sleep(0.05)

    asyncio.run(leave())
    assert source.closed and source.produced < 1000
