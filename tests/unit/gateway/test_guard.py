"""Admission logic in-process: the in-flight cap, the declared-body check, closing after an
unread body, stream slots per caller, and bounded metric labels."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.types import Message, Receive, Scope, Send

from mlapi_gateway import errors
from mlapi_gateway.metrics import MetricsMiddleware
from mlapi_gateway.ratelimit import RequestGuard, StreamSlots
from mlapi_gateway.settings import GatewaySettings


def _scope(path: str = "/v1/models/digits/predict", headers: dict[str, str] | None = None) -> Scope:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": "POST", "path": path, "headers": raw, "state": {}}


class Exchange:
    """One request through an ASGI app: the body arrives in ``chunks``; the answer is recorded."""

    def __init__(self, chunks: list[bytes] | None = None) -> None:
        self.chunks = list(chunks or [b""])
        self.start: Message | None = None
        self.body = b""

    async def receive(self) -> Message:
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}
        await asyncio.Event().wait()  # the rest never arrives
        raise AssertionError("unreachable")

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        else:
            self.body += message.get("body", b"")

    @property
    def status(self) -> int:
        assert self.start is not None
        return int(self.start["status"])

    def header(self, name: str) -> str | None:
        assert self.start is not None
        for key, value in self.start["headers"]:
            if key.decode().lower() == name:
                return value.decode()
        return None


async def _answer(scope: Scope, receive: Receive, send: Send, read: bool = True) -> None:
    if read:
        while (await receive()).get("more_body"):
            pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(**{"max_in_flight": 2, "retry_after_s": 3, **overrides})


def test_requests_over_the_in_flight_cap_are_503_with_retry_after() -> None:
    release = asyncio.Event()

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await _answer(scope, receive, send)

    async def main() -> None:
        guard = RequestGuard(slow_app, _settings())
        held = [Exchange() for _ in range(2)]
        tasks = [asyncio.create_task(guard(_scope(), e.receive, e.send)) for e in held]
        await asyncio.sleep(0)
        assert guard.in_flight == 2
        shed = Exchange()
        await guard(_scope(), shed.receive, shed.send)
        assert shed.status == 503 and shed.header("retry-after") == "3"
        assert shed.header("content-type") == "application/problem+json"
        assert json.loads(shed.body)["type"].endswith("/overloaded")
        probe = Exchange()  # health and metrics are never shed
        release.set()
        await guard(_scope("/healthz"), probe.receive, probe.send)
        assert probe.status == 200
        await asyncio.gather(*tasks)
        assert [e.status for e in held] == [200, 200] and guard.in_flight == 0

    asyncio.run(main())


def test_openai_routes_are_guarded_and_refused_with_openai_error_objects() -> None:
    release = asyncio.Event()
    path = "/openai/v1/chat/completions"

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await _answer(scope, receive, send)

    async def main() -> None:
        guard = RequestGuard(slow_app, _settings(max_body_bytes=2048))
        held = [Exchange() for _ in range(2)]
        tasks = [asyncio.create_task(guard(_scope(path), e.receive, e.send)) for e in held]
        await asyncio.sleep(0)
        assert guard.in_flight == 2
        shed = Exchange()
        await guard(_scope(path), shed.receive, shed.send)
        assert shed.status == 503 and shed.header("retry-after") == "3"
        assert shed.header("content-type") == "application/json"
        assert json.loads(shed.body)["error"]["code"] == "overloaded"
        release.set()
        await asyncio.gather(*tasks)
        big = Exchange()
        await guard(_scope(path, {"Content-Length": "4096"}), big.receive, big.send)
        assert big.status == 413 and big.header("connection") == "close"
        error = json.loads(big.body)["error"]
        assert error["type"] == "invalid_request_error" and "4096 bytes" in error["message"]

    asyncio.run(main())


def test_a_declared_oversized_body_is_413_before_the_app_runs() -> None:
    called = False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal called
        called = True

    async def main() -> None:
        exchange = Exchange()
        guard = RequestGuard(app, _settings(max_body_bytes=2048))
        await guard(_scope(headers={"Content-Length": "4096"}), exchange.receive, exchange.send)
        assert exchange.status == 413 and exchange.header("connection") == "close"
        assert "4096 bytes" in exchange.body.decode()

    asyncio.run(main())
    assert not called


@pytest.mark.parametrize(
    ("chunks", "read", "closes"),
    [
        ([b"{}"], True, False),  # read whole: keep-alive
        ([b"{", b"}"], True, False),
        ([b"{", b"}"], False, True),  # answered before the body was read: close
    ],
)
def test_the_connection_closes_only_when_the_body_was_left_unread(
    chunks: list[bytes], read: bool, closes: bool
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _answer(scope, receive, send, read=read)

    async def main() -> Exchange:
        exchange = Exchange(chunks)
        headers = {"Content-Length": str(sum(map(len, chunks)))}
        await RequestGuard(app, _settings())(
            _scope(headers=headers), exchange.receive, exchange.send
        )
        return exchange

    exchange = asyncio.run(main())
    assert exchange.status == 200
    assert (exchange.header("connection") == "close") is closes


def test_stream_slots_are_per_caller_and_given_back() -> None:
    slots = StreamSlots(limit=2, retry_after_s=4)
    slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(errors.TooManyStreamsError) as refused:
        slots.acquire("a")
    assert refused.value.retry_after_s == 4
    slots.acquire("b")
    slots.release("a")
    slots.acquire("a")
    assert (slots.held("a"), slots.held("b")) == (2, 1)
    for _ in range(3):
        slots.release("a")  # one release too many leaves nothing negative behind
    assert slots.held("a") == 0


def _count(route: str, model: str, status_class: str) -> float:
    labels = {"route": route, "model": model, "version": "", "status_class": status_class}
    return REGISTRY.get_sample_value("mlapi_gateway_requests_total", labels) or 0.0


def test_metric_labels_name_only_exposed_models_and_count_hangups_as_499() -> None:
    async def labelled(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["model"] = scope["path"].split("/")[3]
        if scope["path"].endswith("/hangup"):
            raise asyncio.CancelledError
        await _answer(scope, receive, send)

    async def main() -> None:
        middleware = MetricsMiddleware(labelled, models=["digits"])
        for path in ("/v1/models/digits/x", "/v1/models/made-up-1/x", "/v1/models/made-up-2/x"):
            exchange = Exchange()
            await middleware(_scope(path), exchange.receive, exchange.send)
        with pytest.raises(asyncio.CancelledError):
            exchange = Exchange()
            await middleware(_scope("/v1/models/digits/hangup"), exchange.receive, exchange.send)

    before = {m: _count("unmatched", m, "2xx") for m in ("digits", "", "made-up-1")}
    hangups = _count("unmatched", "digits", "4xx")
    asyncio.run(main())
    assert _count("unmatched", "digits", "2xx") == before["digits"] + 1
    assert _count("unmatched", "", "2xx") == before[""] + 2
    assert _count("unmatched", "made-up-1", "2xx") == 0
    assert _count("unmatched", "digits", "4xx") == hangups + 1
