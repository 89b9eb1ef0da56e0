"""The HTTP transport against a small real aiohttp server (no Triton): Retry-After and SSE.

Triton itself never sends Retry-After; proxies and the project's gateway do, so the client's
handling is checked against a server that does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from mlapi_client import AsyncClient, ModelUnavailableError, RetryPolicy, ServerError
from mlapi_client.transport_http import retry_after_s

OK_BODY = {
    "model_name": "echo",
    "model_version": "3",
    "outputs": [{"name": "y", "datatype": "INT32", "shape": [1], "data": [7]}],
}


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def test_retry_after_header_is_honoured(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []

    async def infer(request: web.Request) -> web.Response:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            return web.json_response(
                {"error": "warming up"}, status=503, headers={"Retry-After": "1"}
            )
        return web.json_response(OK_BODY)

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/v2/models/echo/infer", infer)
        runner, url = await start(app)
        try:
            policy = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.01)
            async with AsyncClient(url, retry=policy) as client:
                response = await client.infer("echo", {"x": np.array([1], np.int32)})
                assert response.model_version == "3"
                assert response["y"].tolist() == [7]
                with pytest.raises(ModelUnavailableError) as info:
                    calls.clear()
                    await client.infer("echo", {"x": np.array([1], np.int32)}, retry=False)
                assert info.value.retry_after_s == 1.0
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.INFO, logger="mlapi_client.retry"):
        asyncio.run(scenario())
    assert any("retry 1 in 1.00s" in r.getMessage() for r in caplog.records)


def test_sse_stream_and_error_event() -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        for index in range(body["count"]):
            await reply.write(
                f"data: {json.dumps({'model_name': 'm', 'model_version': '1', 'index': index})}\n\n".encode()
            )
        await reply.write(b'data: {"error": "the model failed"}\n\n')
        return reply

    async def scenario() -> tuple[list[int], ServerError]:
        app = web.Application()
        app.router.add_post("/v2/models/m/generate_stream", stream)
        runner, url = await start(app)
        seen: list[int] = []
        try:
            async with AsyncClient(url) as client:
                with pytest.raises(ServerError) as info:
                    async for response in client.stream("m", {"count": np.array([3], np.int32)}):
                        seen.append(int(response["index"][0]))
        finally:
            await runner.cleanup()
        return seen, info.value

    seen, error = asyncio.run(scenario())
    assert seen == [0, 1, 2]
    assert "the model failed" in str(error)


def test_retry_after_parsing() -> None:
    assert retry_after_s("5") == 5.0
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now_s=1445412480.0) == pytest.approx(10.0)


def test_stream_is_retried_until_its_first_response() -> None:
    attempts = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            return web.json_response({"error": "loading"}, status=503)
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        await reply.write(b'data: {"model_name": "m", "model_version": "1", "index": 0}\n\n')
        return reply

    async def scenario(retry: RetryPolicy | bool) -> list[int]:
        app = web.Application()
        app.router.add_post("/v2/models/m/generate_stream", stream)
        runner, url = await start(app)
        try:
            async with AsyncClient(url, retry=RetryPolicy(initial_backoff_s=0.01)) as client:
                stream_responses = client.stream(
                    "m", {"count": np.array([1], np.int32)}, retry=retry
                )
                return [int(r["index"][0]) async for r in stream_responses]
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario(True)) == [0]
    assert attempts == 2
    attempts = 0
    with pytest.raises(ModelUnavailableError):
        asyncio.run(scenario(False))
    assert attempts == 1


def test_the_request_id_reaches_the_server_as_the_kserve_id() -> None:
    seen: list[Any] = []

    async def infer(request: web.Request) -> web.Response:
        raw = await request.read()
        size = int(request.headers.get("Inference-Header-Content-Length", len(raw)))
        seen.append(json.loads(raw[:size]).get("id"))
        return web.json_response(OK_BODY)

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append((await request.json()).get("id"))
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        await reply.write(b'data: {"model_name": "m", "model_version": "1", "index": 0}\n\n')
        return reply

    async def scenario() -> None:
        app = web.Application()
        app.router.add_post("/v2/models/echo/infer", infer)
        app.router.add_post("/v2/models/m/generate_stream", stream)
        runner, url = await start(app)
        try:
            async with AsyncClient(url) as client:
                x = {"x": np.array([1], np.int32)}
                await client.infer("echo", x, request_id="req-1")
                await client.infer("echo", x)
                async for _ in client.stream("m", x, request_id="req-2"):
                    pass
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    assert seen == ["req-1", None, "req-2"]
