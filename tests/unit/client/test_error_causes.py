"""Every mapped upstream error keeps its cause: ``MlapiError.__cause__`` is what the wire raised.

Three levels: the one mapping (``translated``) for each kind of failure of either protocol; the
public client over a local HTTP server and a local gRPC server (real sockets, real transports,
no Triton) answering with errors; and the NOT_FOUND refinement, whose chain must still reach
the upstream failure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from mlapi_client import (
    NO_RETRY,
    AsyncClient,
    ConnectionFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    MlapiError,
    ModelNotFoundError,
    ModelUnavailableError,
    ServerError,
    ServerOverloadedError,
    UnsupportedRequestError,
)
from mlapi_client.error_mapping import (
    CallContext,
    ChannelUnreachableError,
    HttpStatusError,
    StreamError,
    translated,
)

CTX = CallContext("infer", "digits", "", 2.0)
INPUTS = {"pixels": np.zeros((1, 64), np.float32)}


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


UPSTREAM = [
    # HTTP: the project's own HTTP code, tritonclient.http, aiohttp, sockets
    (HttpStatusError(400, "input 'image': expected UINT8, got FP32"), InvalidInputError),
    (HttpStatusError(404, "Request for unknown model"), ModelNotFoundError),
    (HttpStatusError(429, "slow down", retry_after_s=1.0), ServerOverloadedError),
    (HttpStatusError(503, "unavailable"), ModelUnavailableError),
    (HttpStatusError(500, "boom"), ServerError),
    (InferenceServerException("unknown model", status="400"), InvalidInputError),
    (aiohttp.ClientResponseError(None, (), status=501, message="no"), UnsupportedRequestError),  # type: ignore[arg-type]
    (aiohttp.ServerDisconnectedError(), ConnectionFailedError),
    (ConnectionRefusedError(111, "refused"), ConnectionFailedError),
    (TimeoutError(), InferenceTimeoutError),
    (StreamError("Stub process 'digits_0_0' is not healthy."), ModelUnavailableError),
    # gRPC: tritonclient.grpc, grpc's own errors, the transport's channel check
    (
        InferenceServerException("bad input", status="StatusCode.INVALID_ARGUMENT"),
        InvalidInputError,
    ),
    (InferenceServerException("gone", status="StatusCode.NOT_FOUND"), ModelNotFoundError),
    (
        InferenceServerException("late", status="StatusCode.DEADLINE_EXCEEDED"),
        InferenceTimeoutError,
    ),
    (_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"), ServerOverloadedError),
    (_rpc_error(grpc.StatusCode.INTERNAL, "boom"), ServerError),
    (ChannelUnreachableError("failed to connect to all addresses"), ConnectionFailedError),
    (StreamError("unexpected inference input 'x' for model 'm'"), InvalidInputError),
]


@pytest.mark.parametrize(("upstream", "expected"), UPSTREAM, ids=lambda x: type(x).__name__)
def test_the_mapping_keeps_the_upstream_error_as_the_cause(
    upstream: BaseException, expected: type[MlapiError]
) -> None:
    async def fail() -> None:
        async with translated(CTX):
            raise upstream

    with pytest.raises(MlapiError) as info:
        asyncio.run(fail())
    assert isinstance(info.value, expected)
    assert info.value.__cause__ is upstream


@asynccontextmanager
async def _http_server(status: int, message: str) -> AsyncIterator[str]:
    """A local HTTP server answering every request with ``status`` and Triton's error body."""
    body = json.dumps({"error": message}).encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(
            f"HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, InvalidInputError), (503, ModelUnavailableError), (500, ServerError)],
)
def test_an_http_error_from_the_wire_is_the_cause(status: int, expected: type[MlapiError]) -> None:
    async def scenario() -> MlapiError:
        async with _http_server(status, "refused on purpose") as url:
            client = AsyncClient(url, retry=NO_RETRY, triton_key="")
            try:
                with pytest.raises(MlapiError) as info:
                    await client.infer("digits_classifier", INPUTS)
            finally:
                await client.close()
        return info.value

    error = asyncio.run(scenario())
    assert isinstance(error, expected)
    assert error.status == str(status)
    assert isinstance(error.__cause__, HttpStatusError)
    assert error.__cause__.status == status
    assert "refused on purpose" in error.__cause__.message


def test_a_grpc_status_from_the_wire_is_the_cause() -> None:
    """A real gRPC server without Triton's service answers every call UNIMPLEMENTED."""

    async def scenario() -> MlapiError:
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with AsyncClient(
                f"grpc://127.0.0.1:{port}", retry=NO_RETRY, triton_key=""
            ) as client:
                with pytest.raises(MlapiError) as info:
                    await client.infer("digits_classifier", INPUTS)
        finally:
            await server.stop(None)
        return info.value

    error = asyncio.run(scenario())
    assert isinstance(error, UnsupportedRequestError)
    assert error.status == "UNIMPLEMENTED"
    cause = error.__cause__
    assert isinstance(cause, InferenceServerException)
    assert cause.status() == "StatusCode.UNIMPLEMENTED"


class _NotFoundTransport:
    """A transport whose model is listed in the index but not loaded."""

    def __init__(self, upstream: BaseException) -> None:
        self.upstream = upstream

    async def infer(self, *args: object, **kwargs: object) -> None:
        raise self.upstream

    async def repository_index(self) -> list[dict[str, str]]:
        return [{"name": "digits", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}]

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "upstream",
    [
        HttpStatusError(404, "Request for unknown model: 'digits' is not found"),
        InferenceServerException("Request for unknown model", status="StatusCode.NOT_FOUND"),
    ],
    ids=["http", "grpc"],
)
def test_a_refined_not_found_still_leads_back_to_the_upstream_error(
    upstream: BaseException,
) -> None:
    async def scenario() -> MlapiError:
        client = AsyncClient("127.0.0.1:1", retry=NO_RETRY, triton_key="")
        client._transport = _NotFoundTransport(upstream)  # type: ignore[assignment]
        try:
            with pytest.raises(MlapiError) as info:
                await client.infer("digits", INPUTS)
        finally:
            await client.close()
        return info.value

    error = asyncio.run(scenario())
    assert type(error) is ModelUnavailableError
    assert isinstance(error.__cause__, ModelNotFoundError)
    assert error.__cause__.__cause__ is upstream
