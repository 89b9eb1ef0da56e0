"""The predict fast paths answer as the router would.

routes.PredictFastPath: each request is sent to the assembled app twice, as is and with the
fast path stepped around (the middleware passes everything down the stack). The protocol's
shortcut (mlapi_gateway.fastpath): each request is sent to a real uvicorn server twice, with
the shortcut on and off. Answers, access log lines and metric samples must match.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
import uvicorn
import uvloop
from prometheus_client import REGISTRY

from mlapi_gateway import create_app, routes
from mlapi_gateway.access import ACCESS_LOGGER
from mlapi_gateway.fastpath import PredictShortcut
from mlapi_gateway.keys import add_key, new_key
from mlapi_gateway.server import HttpProtocol
from mlapi_gateway.services import Services

from .fake_triton import FakeTriton
from .inprocess import Gateway, run, settings_for

PIXELS = {"pixels": [[0] * 8] * 8}
# Each request is sent twice and both answers compared: no cached answer may serve the second
# (a setting unknown to the settings is ignored).
NO_CACHE: dict[str, Any] = {"exact_cache_models": []}

# (method, path, body, with the key): successes and every kind of refusal on predict paths.
CASES: list[tuple[str, str, Any, bool]] = [
    ("POST", "/v1/models/digits/predict", PIXELS, True),
    ("POST", "/v1/models/digits/predict?timeout_s=5", {**PIXELS, "top_k": 2}, True),
    ("POST", "/v1/models/digits/predict?other=1", PIXELS, True),
    ("POST", "/v1/models/digits/predict?timeout_s=abc", PIXELS, True),
    ("POST", "/v1/models/digits/predict?timeout_s=0", PIXELS, True),
    ("POST", "/v1/models/digits/versions/1/predict", PIXELS, True),
    ("POST", "/v1/models/digits/versions/9/predict", PIXELS, True),
    ("POST", "/v1/models/nope/predict", PIXELS, True),
    ("POST", "/v1/models/echo/predict", {"inputs": {"x": [[1, 2]]}}, True),
    ("POST", "/v1/models/digits/predict", {"pixels": "x"}, True),
    ("POST", "/v1/models/digits/predict", b"{not json", True),
    ("POST", "/v1/models/digits/predict", PIXELS, False),
    ("GET", "/v1/models/digits/predict", None, True),
    ("POST", "/v1/models//predict", PIXELS, True),
    ("POST", "/v1/models/digits/predict/", PIXELS, True),
    ("POST", "/v1/models/a/b/predict", PIXELS, True),
]


async def _send(gw: Gateway, method: str, path: str, body: Any, keyed: bool) -> tuple[Any, ...]:
    headers = {**(gw.auth if keyed else {}), "X-Request-ID": "same-id"}
    content = body if isinstance(body, bytes) else None if body is None else orjson.dumps(body)
    if content is not None:
        headers["Content-Type"] = "application/json"
    reply = await gw.http.request(method, path, content=content, headers=headers)
    answer = dict(reply.headers)
    answer.pop("content-length", None)
    return reply.status_code, answer, reply.content


def test_the_fast_path_answers_as_the_router(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    fast = routes.PredictFastPath.__call__

    async def stepped_around(self: routes.PredictFastPath, *args: Any) -> None:
        await self.app(*args)

    async def check(gw: Gateway) -> None:
        for method, path, body, keyed in CASES:
            monkeypatch.setattr(routes.PredictFastPath, "__call__", fast)
            taken = await _send(gw, method, path, body, keyed)
            monkeypatch.setattr(routes.PredictFastPath, "__call__", stepped_around)
            routed = await _send(gw, method, path, body, keyed)
            assert taken == routed, (method, path)

    run(tmp_path, check, **NO_CACHE)
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 2 * len(CASES)
    for taken, routed in zip(lines[::2], lines[1::2], strict=True):
        for key in ("route", "status", "model", "version", "key_id", "path", "bytes_in"):
            assert taken[key] == routed[key], key
    statuses = {line["status"] for line in lines}
    assert {200, 400, 401, 404, 405} <= statuses  # the cases reach every kind of answer
    assert lines[0]["route"] == "/v1/models/{model}/predict"
    assert lines[10]["route"] == "/v1/models/{model}/versions/{version}/predict"


# --- the predict shortcut at the HTTP protocol (mlapi_gateway.fastpath) ---------------------


class Served:
    """A real uvicorn server with the gateway's protocol, over a FakeTriton, on a free port."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.key = key

    async def exchange(self, raw: bytes, answers: int = 1) -> list[Answer]:
        """Send ``raw`` on a new connection and read ``answers`` answers from it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            await writer.drain()
            return [await read_answer(reader) for _ in range(answers)]
        finally:
            writer.close()


class Answer(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def compared(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """What both paths must give alike: all but the date and the body's length."""
        kept = sorted((k, v) for k, v in self.headers if k not in ("date", "content-length"))
        return self.status, kept, self.body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """Read one HTTP/1.1 answer with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [
        (name.lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    ]
    length = int(next((v for k, v in headers if k == "content-length"), "0"))
    return Answer(status, headers, await reader.readexactly(length))


def request_bytes(
    method: str, path: str, body: Any = None, key: str | None = None, **headers: str
) -> bytes:
    """One HTTP/1.1 request; ``body`` as JSON unless bytes; extra headers by keyword."""
    content = body if isinstance(body, bytes) else b"" if body is None else orjson.dumps(body)
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", "X-Request-ID: same-id"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(content)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


ServedCheck = Callable[[Served], Awaitable[None]]


def serve(tmp_path: Path, check: ServedCheck, **overrides: Any) -> None:
    """Run ``check`` against the gateway served by uvicorn with mlapi_gateway.server's protocol."""
    key, record = new_key(["predict"])
    add_key(tmp_path / "keys.json", record)
    settings = settings_for(tmp_path, **{**NO_CACHE, **overrides})
    app = create_app(settings, Services.build(settings, FakeTriton.default()))

    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, http=HttpProtocol, loop="none", log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                assert not serving.done(), "the server did not start"
                await asyncio.sleep(0.01)
            await check(Served(sock.getsockname()[1], key))
        finally:
            server.should_exit = True
            await serving

    uvloop.run(main())


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter and histogram count of the gateway's metrics, by name and labels."""
    out = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("mlapi_gateway_"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count")):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def added(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


async def both_ways(
    served: Served, raw: bytes, monkeypatch: pytest.MonkeyPatch, answers: int = 1
) -> tuple[list[Answer], list[Answer]]:
    """Send ``raw`` through the shortcut, then through the ASGI app; metrics must match."""
    changes = []
    replies = []
    for enabled in (True, False):
        monkeypatch.setattr(HttpProtocol, "shortcut_enabled", enabled)
        before = samples()
        replies.append(await served.exchange(raw, answers))
        changes.append(added(before, samples()))
    assert changes[0] == changes[1], (raw, replies)
    return replies[0], replies[1]


SERVED_KEY = "@served-key@"  # replaced by the served gateway's key
ACCESS_FIELDS = ("route", "status", "model", "version", "key_id", "path", "bytes_in", "bytes_out",
                 "request_id", "method")  # fmt: skip


PROTOCOL_CASES = [
    *(request_bytes(m, p, b, SERVED_KEY if keyed else None) for m, p, b, keyed in CASES),
    request_bytes("POST", "/v1/models/digits/predict", PIXELS, "not-a-key"),
    request_bytes("POST", "/v1/models/digits/predict", b"x" * 5000, SERVED_KEY),  # over 4096
    request_bytes("POST", "/v1/models/digits/predict", b"", SERVED_KEY),
    request_bytes("POST", "/v1/models/digits/predict", PIXELS, SERVED_KEY, Connection="close"),
]


def test_the_protocol_shortcut_answers_as_the_asgi_app(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    taken = []

    async def check(served: Served) -> None:
        for raw in PROTOCOL_CASES:
            raw = raw.replace(SERVED_KEY.encode(), served.key.encode())
            via_shortcut, via_app = await both_ways(served, raw, monkeypatch)
            assert via_shortcut[0].compared() == via_app[0].compared(), raw
            taken.append(via_shortcut[0].status)

    run_counted = counting_runs(monkeypatch)
    serve(tmp_path, check, max_body_bytes=4096)
    assert {200, 400, 401, 404, 405, 413} <= set(taken)  # every kind of answer is compared
    assert run_counted  # the shortcut did answer
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 2 * len(PROTOCOL_CASES)
    for via_shortcut, via_app in zip(lines[::2], lines[1::2], strict=True):
        for key in ACCESS_FIELDS:
            assert via_shortcut[key] == via_app[key], (key, via_shortcut, via_app)


def counting_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Note the path of every request PredictShortcut.run answers."""
    seen: list[str] = []
    original = PredictShortcut.run

    async def run(self: PredictShortcut, cycle: Any, route: Any) -> None:
        seen.append(cycle.scope["path"])
        await original(self, cycle, route)

    monkeypatch.setattr(PredictShortcut, "run", run)
    return seen
