"""Request ids, the access log and the logging of 5xx answers, on the assembled app in-process
(no Triton: its ports are closed, so model calls are 503s)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import logging.config
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlapi_gateway import GatewaySettings, create_app
from mlapi_gateway.access import ACCESS_LOGGER, LineHandler, logging_config, write_line
from mlapi_gateway.keys import add_key, new_key
from mlapi_gateway.request_id import request_id_from

Check = Callable[[httpx.AsyncClient, str], Awaitable[None]]
FIELDS = {
    "time", "request_id", "key_id", "method", "route", "path", "model", "version", "status",
    "latency_ms", "bytes_in", "bytes_out",
}  # fmt: skip


def _run(tmp_path: Path, check: Check, **overrides: object) -> str:
    """Run ``check`` against a fresh app; returns the id of the predict key it was given."""
    key, record = new_key(["predict"])
    add_key(tmp_path / "keys.json", record)
    settings = GatewaySettings(
        **overrides,
        keys_file=tmp_path / "keys.json",
        jobs_db=tmp_path / "jobs.sqlite3",
        triton_grpc_url="127.0.0.1:9",
        triton_http_url="127.0.0.1:9",
        retry_after_s=1,
    )
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("broken on purpose")

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
        ):
            await check(client, key)

    asyncio.run(main())
    return record.id


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]


def test_a_safe_caller_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_from([(b"x-request-id", b"abc-123_X.y:z")]) == "abc-123_X.y:z"
    for unsafe in (b"", b"a" * 129, b"has space", b"new\nline", b"{json}", "é".encode()):
        fresh = request_id_from([(b"x-request-id", unsafe)])
        assert fresh != unsafe.decode(errors="replace") and len(fresh) == 32
        int(fresh, 16)
    assert request_id_from([]) != request_id_from([])


def test_the_id_is_echoed_and_quoted_in_problems(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient, key: str) -> None:
        given = await client.get("/healthz", headers={"X-Request-ID": "caller-id-1"})
        assert given.headers["X-Request-ID"] == "caller-id-1"
        fresh = await client.get("/healthz", headers={"X-Request-ID": "bad id\t"})
        assert fresh.headers["X-Request-ID"] != "bad id\t"
        assert len(fresh.headers["X-Request-ID"]) == 32
        refused = await client.post("/v1/models/digits/predict", json={})
        assert refused.status_code == 401
        assert refused.json()["request_id"] == refused.headers["X-Request-ID"]
        crashed = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
        assert crashed.status_code == 500
        assert crashed.headers["X-Request-ID"] == "boom-1"
        assert crashed.json()["request_id"] == "boom-1"
        assert "broken on purpose" not in crashed.text

    _run(tmp_path, check)


def test_one_access_line_per_request_with_the_right_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    seen: dict[str, httpx.Response] = {}

    async def check(client: httpx.AsyncClient, key: str) -> None:
        auth = {"Authorization": f"Bearer {key}"}
        seen["200"] = await client.get("/healthz", headers={"X-Request-ID": "ok-1"})
        seen["401"] = await client.post(
            "/v1/models/digits/predict", json={"pixels": [[0]]}, headers={"X-Request-ID": "no-1"}
        )
        seen["400"] = await client.post(
            "/v1/models/digits/predict", content=b"{", headers={**auth, "X-Request-ID": "bad-1"}
        )
        seen["503"] = await client.post(
            "/v1/models/digits/predict",
            json={"pixels": [[0] * 8] * 8},
            headers={**auth, "X-Request-ID": "down-1"},
        )
        seen["500"] = await client.get("/boom", headers={"X-Request-ID": "boom-1"})

    key_id = _run(tmp_path, check)
    lines = {line["request_id"]: line for line in _lines(caplog)}
    assert len(_lines(caplog)) == 5 and set(lines) == {"ok-1", "no-1", "bad-1", "down-1", "boom-1"}
    for line in lines.values():
        assert set(line) == FIELDS
        assert line["time"].endswith("+00:00") and line["latency_ms"] >= 0
    ok, no, bad, down, boom = (lines[i] for i in ("ok-1", "no-1", "bad-1", "down-1", "boom-1"))
    assert (ok["status"], ok["route"], ok["method"], ok["key_id"]) == (200, "/healthz", "GET", None)
    assert ok["bytes_out"] == len(seen["200"].content) and ok["bytes_in"] == 0
    assert (no["status"], no["key_id"], no["model"]) == (401, None, None)
    assert no["bytes_in"] == 0  # refused before its body was read: the bytes the gateway took
    assert (bad["status"], bad["key_id"], bad["model"]) == (400, key_id, "digits")
    assert (
        bad["route"] == "/v1/models/{model}/predict" and bad["path"] == "/v1/models/digits/predict"
    )
    assert bad["bytes_in"] == 1 and bad["bytes_out"] == len(seen["400"].content)
    assert (down["status"], down["key_id"], down["model"], down["version"]) == (
        503, key_id, "digits", None,
    )  # fmt: skip
    assert (boom["status"], boom["route"]) == (500, "/boom")
    assert boom["bytes_out"] == len(seen["500"].content)


def test_the_key_itself_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keys: list[str] = []

    async def check(client: httpx.AsyncClient, key: str) -> None:
        keys.append(key)
        auth = {"Authorization": f"Bearer {key}"}
        await client.get("/v1/models", headers=auth)
        await client.post("/v1/models/digits/predict", json={"pixels": [[0] * 8] * 8}, headers=auth)
        await client.post("/v1/jobs", json={"model": "digits", "inputs": [{}]}, headers=auth)

    _run(tmp_path, check)
    assert len(_lines(caplog)) == 3 and all(line["key_id"] for line in _lines(caplog))
    assert keys[0] not in caplog.text and keys[0] not in repr([r.args for r in caplog.records])


def test_the_setting_turns_the_access_log_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    async def check(client: httpx.AsyncClient, key: str) -> None:
        reply = await client.get("/healthz")
        assert reply.status_code == 200 and len(reply.headers["X-Request-ID"]) == 32
        assert (await client.get("/boom")).status_code == 500

    _run(tmp_path, check, access_log=False)
    assert _lines(caplog) == []


def test_each_5xx_is_logged_once_with_its_cause_and_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def check(client: httpx.AsyncClient, key: str) -> None:
        auth = {"Authorization": f"Bearer {key}"}
        await client.get("/boom", headers={"X-Request-ID": "boom-2"})
        reply = await client.post(
            "/v1/models/digits/predict",
            json={"pixels": [[0] * 8] * 8},
            headers={**auth, "X-Request-ID": "down-2"},
        )
        assert reply.status_code == 503 and reply.json()["request_id"] == "down-2"
        bad = await client.post("/v1/models/digits/predict", content=b"{", headers=auth)
        assert bad.status_code == 400

    _run(tmp_path, check)
    gateway = [r for r in caplog.records if r.name.startswith("mlapi_gateway")]
    boom = [r for r in gateway if "boom-2" in r.getMessage()]
    assert len(boom) == 1 and boom[0].levelno == logging.ERROR
    assert "RuntimeError: broken on purpose" in boom[0].getMessage() and boom[0].exc_info
    down = [r for r in gateway if "down-2" in r.getMessage()]
    assert len(down) == 1 and down[0].levelno == logging.WARNING  # a 503: documented as warning
    assert "-> 503 unavailable" in down[0].getMessage()
    assert "cause ConnectionFailedError" in down[0].getMessage()
    assert not [r for r in gateway if "-> 400" in r.getMessage()]  # 4xx: the access log only


@contextlib.contextmanager
def line_handler() -> Iterator[tuple[LineHandler, io.StringIO]]:
    """The access logger as logging_config sets it up, its one handler writing to a buffer.

    Entered inside the test: pytest's log capture adds its handlers to every logger that does
    not propagate when the test starts, and removes them when it ends.
    """
    logger = logging.getLogger(ACCESS_LOGGER)
    buffer = io.StringIO()
    handler = LineHandler(buffer)
    saved = (logger.handlers[:], logger.filters[:], logger.propagate, logger.level)
    logger.handlers[:], logger.filters[:], logger.propagate = [handler], [], False
    logger.setLevel(logging.INFO)
    try:
        yield handler, buffer
    finally:
        logger.handlers[:], logger.filters[:], logger.propagate = saved[:3]
        logger.setLevel(saved[3])


SCOPE = {
    "method": "POST",
    "path": "/v1/models/digits/predict",
    "state": {"key_id": "k-1", "model": "digits", "model_version": "2"},
}


def test_logging_config_writes_access_lines_through_the_line_handler() -> None:
    config = logging_config("info")
    assert config["loggers"][ACCESS_LOGGER] == {
        "handlers": ["mlapi_access"], "level": "INFO", "propagate": False,
    }  # fmt: skip
    configurator = logging.config.DictConfigurator(config)  # what dictConfig builds from it
    handler = configurator.configure_handler(configurator.config["handlers"]["mlapi_access"])
    assert type(handler) is LineHandler and handler.stream is sys.stdout


def test_the_line_handler_writes_the_line_a_record_would_without_making_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    seen: list[logging.LogRecord] = []
    with line_handler() as (_, buffer):
        with monkeypatch.context() as patched:
            patched.setattr(logger, "makeRecord", _no_record)
            write_line(SCOPE, "rid-1", 200, time.perf_counter(), 10, 20)
        direct = buffer.getvalue()
        # The same line through the record machinery: a filter on the logger forces it.
        logger.addFilter(lambda record: seen.append(record) or True)
        write_line(SCOPE, "rid-1", 200, time.perf_counter(), 10, 20)
        through_record = buffer.getvalue()[len(direct) :]
    assert len(seen) == 1 and through_record == seen[0].getMessage() + "\n"
    assert direct.endswith("\n") and direct.count("\n") == 1
    one, two = json.loads(direct), json.loads(through_record)
    assert list(one) == list(two) == [
        "time", "request_id", "key_id", "method", "route", "path", "model", "version",
        "status", "latency_ms", "bytes_in", "bytes_out",
    ]  # fmt: skip
    volatile = ("time", "latency_ms")
    assert {k: v for k, v in one.items() if k not in volatile} == {
        k: v for k, v in two.items() if k not in volatile
    } == {
        "request_id": "rid-1", "key_id": "k-1", "method": "POST", "route": "unmatched",
        "path": "/v1/models/digits/predict", "model": "digits", "version": "2", "status": 200,
        "bytes_in": 10, "bytes_out": 20,
    }  # fmt: skip


def test_any_other_arrangement_gets_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    with line_handler() as (handler, buffer):
        _every_arrangement_makes_records(handler, monkeypatch)
        assert buffer.getvalue().splitlines()[-1].startswith("access INFO {")


def _every_arrangement_makes_records(handler: LineHandler, monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    other = logging.Formatter("access %(levelname)s %(message)s")
    arrangements: list[Callable[[pytest.MonkeyPatch], object]] = [
        lambda patched: patched.setattr(logger, "propagate", True),
        lambda patched: patched.setattr(logger, "handlers", [handler, logging.NullHandler()]),
        lambda patched: patched.setattr(handler, "filters", [lambda record: True]),
        lambda patched: patched.setattr(handler, "formatter", other),
    ]
    for arrange in arrangements:
        with monkeypatch.context() as patched:
            arrange(patched)
            made: list[logging.LogRecord] = []
            make = logger.makeRecord

            def recording(*args: Any, make: Any = make, made: list[Any] = made) -> Any:
                made.append(make(*args))
                return made[-1]

            patched.setattr(logger, "makeRecord", recording)
            write_line(SCOPE, "rid-2", 503, time.perf_counter(), 0, 5)
        assert len(made) == 1 and json.loads(made[0].getMessage())["status"] == 503


def test_a_failed_write_is_reported_as_logging_reports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[logging.LogRecord] = []
    with line_handler() as (handler, buffer):
        buffer.close()  # writing to it raises ValueError
        monkeypatch.setattr(handler, "handleError", reported.append)
        write_line(SCOPE, "rid-3", 200, time.perf_counter(), 0, 0)
    assert len(reported) == 1 and json.loads(reported[0].getMessage())["request_id"] == "rid-3"


def _no_record(*args: object) -> logging.LogRecord:
    raise AssertionError("the line handler's path made a log record")


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []  # what was written at each flush

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_lines_written_in_one_loop_iteration_are_flushed_together() -> None:
    stream = _CountingStream()
    handler = LineHandler(stream)

    async def main() -> tuple[list[str], list[str]]:
        handler.write_line("one")
        handler.write_line("two")
        before = list(stream.flushed)  # nothing flushed inside the iteration that wrote
        await asyncio.sleep(0)  # the next iteration runs the scheduled flush
        await asyncio.sleep(0)
        return before, list(stream.flushed)

    before, after = asyncio.run(main())
    assert before == []
    assert after == ["one\ntwo\n"]  # one flush for both lines
    handler.write_line("three")  # no running loop: flushed at once
    assert stream.flushed[-1] == "one\ntwo\nthree\n" and len(stream.flushed) == 2


def test_fresh_request_ids_do_not_repeat() -> None:
    ids = {request_id_from([]) for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 32 for i in ids)
