"""The predict fast path (routes.PredictFastPath) answers as the router would.

Each request is sent to the assembled app twice: as is, and with the fast path stepped
around (the middleware passes everything down the stack), and the answers must match.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from mlapi_gateway import routes
from mlapi_gateway.access import ACCESS_LOGGER

from .inprocess import Gateway, run

PIXELS = {"pixels": [[0] * 8] * 8}

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

    run(tmp_path, check)
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(lines) == 2 * len(CASES)
    for taken, routed in zip(lines[::2], lines[1::2], strict=True):
        for key in ("route", "status", "model", "version", "key_id", "path", "bytes_in"):
            assert taken[key] == routed[key], key
    statuses = {line["status"] for line in lines}
    assert {200, 400, 401, 404, 405} <= statuses  # the cases reach every kind of answer
    assert lines[0]["route"] == "/v1/models/{model}/predict"
    assert lines[10]["route"] == "/v1/models/{model}/versions/{version}/predict"
