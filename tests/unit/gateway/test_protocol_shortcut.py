"""The predict shortcut over a real uvicorn: connections, partial bodies, pipelining, fallbacks.

test_fast_path.py compares the shortcut's answers with the ASGI app's, request by request;
here are the HTTP situations around them, and which requests the shortcut leaves to the app.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from mlapi_gateway import create_app
from mlapi_gateway.access import ACCESS_LOGGER
from mlapi_gateway.fastpath import PredictShortcut
from mlapi_gateway.server import HttpProtocol
from mlapi_gateway.services import Services

from .fake_triton import FakeTriton
from .inprocess import settings_for
from .test_fast_path import (
    PIXELS,
    Served,
    both_ways,
    counting_runs,
    read_answer,
    request_bytes,
    serve,
)

PREDICT = "/v1/models/digits/predict"


def _predict_and_partial(served: Served) -> tuple[bytes, bytes]:
    """A predict request, and its head with the first 20 bytes of its body."""
    raw = request_bytes("POST", PREDICT, PIXELS, served.key)
    return raw, raw[: raw.index(b"\r\n\r\n") + 4 + 20]


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]


def test_keep_alive_serves_several_predicts_on_one_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    answered = counting_runs(monkeypatch)

    async def check(served: Served) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        for number in range(3):
            raw = request_bytes("POST", PREDICT, {**PIXELS, "top_k": number + 1}, served.key)
            writer.write(raw.replace(b"same-id", f"id-{number}".encode()))
            answer = await read_answer(reader)
            assert answer.status == 200
            assert answer.header("connection") is None  # kept alive
            assert answer.header("x-request-id") == f"id-{number}"
            assert len(orjson.loads(answer.body)["predictions"]) == number + 1
        writer.close()

    serve(tmp_path, check)
    assert answered == [PREDICT] * 3
    assert [line["request_id"] for line in _access_lines(caplog)] == ["id-0", "id-1", "id-2"]


def test_pipelined_requests_are_answered_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Predicts and another route sent at once on one connection: answers keep their order."""
    answered = counting_runs(monkeypatch)

    async def check(served: Served) -> None:
        first = request_bytes("POST", PREDICT, {**PIXELS, "top_k": 1}, served.key)
        health = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
        refused = request_bytes("POST", PREDICT, {"pixels": "x"}, served.key)
        last = request_bytes("POST", "/v1/models/digits/versions/1/predict", PIXELS, served.key)
        answers = await served.exchange(first + health + refused + last, answers=4)
        assert [a.status for a in answers] == [200, 200, 400, 200]
        assert len(orjson.loads(answers[0].body)["predictions"]) == 1
        assert orjson.loads(answers[1].body) == {"status": "ok"}
        assert orjson.loads(answers[3].body)["model_version"] == "1"

    serve(tmp_path, check)
    assert len(answered) == 3  # the three predicts; /healthz went to the app


def test_a_body_arriving_in_pieces_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = counting_runs(monkeypatch)

    async def check(served: Served) -> None:
        raw = request_bytes("POST", PREDICT, PIXELS, served.key)
        head, _, body = raw.partition(b"\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(head + b"\r\n\r\n" + body[:10])
        await writer.drain()
        await asyncio.sleep(0.05)  # the rest later: the answer must not depend on how much later
        writer.write(body[10:])
        answer = await read_answer(reader)
        writer.close()
        assert answer.status == 200
        assert orjson.loads(answer.body)["model_version"] == "2"

    serve(tmp_path, check)
    assert answered == [PREDICT]


def test_a_body_too_slow_is_408_and_closes_as_the_app_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    async def check(served: Served) -> None:
        _, partial = _predict_and_partial(served)
        via_shortcut, via_app = await both_ways(served, partial, monkeypatch)
        assert via_shortcut[0].compared() == via_app[0].compared()
        assert via_shortcut[0].status == 408
        assert via_shortcut[0].header("connection") == "close"

    serve(tmp_path, check, body_timeout_s=0.2)
    lines = _access_lines(caplog)
    assert len(lines) == 2 and lines[0]["bytes_in"] == lines[1]["bytes_in"] == 20


def test_a_caller_gone_mid_body_is_logged_as_the_app_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    async def check(served: Served) -> None:
        _, partial = _predict_and_partial(served)
        for enabled in (True, False):
            monkeypatch.setattr(HttpProtocol, "shortcut_enabled", enabled)
            logged = len(_access_lines(caplog))
            _, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(partial)
            await writer.drain()
            writer.close()
            while len(_access_lines(caplog)) == logged:  # until the server has logged it
                await asyncio.sleep(0.01)

    serve(tmp_path, check)
    via_shortcut, via_app = _access_lines(caplog)
    for key in ("status", "route", "model", "key_id", "bytes_in", "bytes_out"):
        assert via_shortcut[key] == via_app[key], key
    assert via_shortcut["status"] == 499


def test_a_shed_counts_requests_of_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One in-flight count per worker: a request held by either path sheds one of the other."""

    async def check(served: Served) -> None:
        raw, partial = _predict_and_partial(served)
        for holder, asker in ((False, True), (True, False)):
            monkeypatch.setattr(HttpProtocol, "shortcut_enabled", holder)
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(partial)  # held in flight while its body is awaited
            await writer.drain()
            monkeypatch.setattr(HttpProtocol, "shortcut_enabled", asker)
            while True:  # until the held request is in flight
                shed = (await served.exchange(raw))[0]
                if shed.status == 503:
                    break
                assert shed.status == 200
            assert shed.header("retry-after") == "2"
            assert orjson.loads(shed.body)["type"].endswith("/overloaded")
            writer.write(raw[len(partial) :])  # the rest: the held request completes
            assert (await read_answer(reader)).status == 200
            writer.close()

    serve(tmp_path, check, max_in_flight=1)


def test_rate_limited_answers_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def check(served: Served) -> None:
        raw = request_bytes("POST", PREDICT, PIXELS, served.key)
        assert (await served.exchange(raw))[0].status == 200  # the one token of the bucket
        via_shortcut, via_app = await both_ways(served, raw, monkeypatch)
        assert via_shortcut[0].status == 429
        assert via_shortcut[0].compared() == via_app[0].compared()

    plans = {"default": {"rate_per_s": 0.001, "burst": 1}}
    serve(tmp_path, check, plans=plans)


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ({"Origin": "https://example.org"}, "HTTP/1.1"),  # CORS answers (or refuses) these
        ({"Expect": "100-continue"}, "HTTP/1.1"),
        ({"X-Forwarded-For": "10.0.0.1"}, "HTTP/1.1"),
        ({}, "HTTP/1.0"),
    ],
)
def test_unusual_requests_go_to_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], version: str
) -> None:
    answered = counting_runs(monkeypatch)

    async def check(served: Served) -> None:
        raw = request_bytes("POST", PREDICT, PIXELS, served.key, **headers)
        answers = 2 if "Expect" in headers else 1  # 100 Continue first
        raw = raw.replace(b"HTTP/1.1", version.encode(), 1)
        answer = (await served.exchange(raw, answers))[-1]
        # The app's answer; a CORS policy may refuse an unlisted origin (403).
        assert answer.status in ((200, 403) if "Origin" in headers else (200,))

    serve(tmp_path, check)
    assert answered == []


def test_a_chunked_body_goes_to_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answered = counting_runs(monkeypatch)

    async def check(served: Served) -> None:
        body = orjson.dumps(PIXELS)
        raw = (
            f"POST {PREDICT} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {served.key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        assert (await served.exchange(raw))[0].status == 200

    serve(tmp_path, check)
    assert answered == []


class Extra:
    """A middleware the shortcut does not know: it would skip whatever it does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _started(app: FastAPI) -> FastAPI:
    app.middleware_stack = app.build_middleware_stack()
    return app


def test_the_shortcut_is_off_for_a_stack_with_a_layer_it_does_not_know(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    plain = _started(create_app(settings, Services.build(settings, FakeTriton.default())))
    plain.state.services = object()  # as after the lifespan's start
    assert PredictShortcut.of(plain) is not None
    extended = create_app(settings, Services.build(settings, FakeTriton.default()))
    extended.add_middleware(Extra)
    _started(extended).state.services = object()
    assert PredictShortcut.of(extended) is None
    limited = create_app(settings, Services.build(settings, FakeTriton.default()))
    limited.max_body_size = 10  # FastAPI's own body limit: Starlette's middleware joins
    _started(limited).state.services = object()
    assert PredictShortcut.of(limited) is None
    rooted = create_app(settings, Services.build(settings, FakeTriton.default()))
    rooted.root_path = "/api"  # FastAPI's own root path: the router sees it, the shortcut not
    _started(rooted).state.services = object()
    assert PredictShortcut.of(rooted) is None


def test_the_shortcut_waits_for_the_app_to_start(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    app = create_app(settings, Services.build(settings, FakeTriton.default()))
    assert PredictShortcut.of(app) is None  # no middleware stack yet
    _started(app)
    assert PredictShortcut.of(app) is None  # no services yet: not remembered either
    app.state.services = object()
    assert PredictShortcut.of(app) is not None
