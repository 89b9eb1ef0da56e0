"""CORS policy (an allow-list of origins) and the stream-token store, in-process."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from mlapi_gateway.cors import CorsMiddleware
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.stream_tokens import Grant, MemoryTokens

LISTED = "http://localhost:5173"


class Recorder:
    """An app answering 200 with X-Model-Version; counts what reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        headers = [(b"x-model-version", b"2"), (b"content-type", b"text/plain")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


def _call(
    settings: GatewaySettings, method: str, headers: dict[str, str]
) -> tuple[httpx.Response, int]:
    inner = Recorder()
    app = CorsMiddleware(inner, settings)

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            return await client.request(method, "/v1/models/digits/predict", headers=headers)

    return asyncio.run(go()), inner.calls


def test_no_origin_or_same_origin_passes_untouched() -> None:
    settings = GatewaySettings()
    for headers in ({}, {"Origin": "http://gw.test"}):
        reply, calls = _call(settings, "POST", headers)
        assert reply.status_code == 200 and calls == 1
        assert "access-control-allow-origin" not in reply.headers


def test_no_origin_is_listed_by_default() -> None:
    reply, calls = _call(GatewaySettings(), "POST", {"Origin": LISTED})
    assert reply.status_code == 403 and calls == 0
    assert reply.headers["content-type"] == "application/problem+json"
    assert "access-control-allow-origin" not in reply.headers


def test_listed_origin_preflight_and_request() -> None:
    settings = GatewaySettings(cors_allow_origins=[LISTED + "/"], cors_allow_credentials=True)
    reply, calls = _call(
        settings,
        "OPTIONS",
        {
            "Origin": LISTED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert reply.status_code == 204 and calls == 0
    assert reply.headers["access-control-allow-origin"] == LISTED
    assert reply.headers["access-control-allow-credentials"] == "true"
    assert reply.headers["access-control-allow-headers"] == "authorization, content-type"
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert reply.headers["vary"] == "Origin"

    reply, calls = _call(settings, "POST", {"Origin": LISTED})
    assert reply.status_code == 200 and calls == 1
    assert reply.headers["access-control-allow-origin"] == LISTED
    exposed = reply.headers["access-control-expose-headers"]
    assert {"X-Model-Version", "Retry-After", "X-Request-ID"} <= set(exposed.split(", "))


def test_unlisted_origin_preflight_is_refused() -> None:
    settings = GatewaySettings(cors_allow_origins=[LISTED])
    reply, calls = _call(
        settings, "OPTIONS", {"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"}
    )
    assert reply.status_code == 403 and calls == 0
    assert "access-control-allow-origin" not in reply.headers


def test_memory_tokens_are_single_use_and_expire() -> None:
    now = [0.0]
    store = MemoryTokens(clock=lambda: now[0])
    grant = Grant("key1", "text_generator", {"inputs": {"text_input": ["a"]}})

    async def go() -> None:
        await store.put("d1", grant, 30)
        await store.put("d2", grant, 30)
        assert await store.take("d1") == grant
        assert await store.take("d1") is None  # used
        now[0] = 31
        assert await store.take("d2") is None  # expired
        assert Grant.from_json(grant.to_json()) == grant

    asyncio.run(go())
