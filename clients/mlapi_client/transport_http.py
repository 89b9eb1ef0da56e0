"""HTTP/REST transport: tritonclient.http.aio for metadata, our own connections for the rest.

Inference goes through a lean keep-alive connection pool (http_pool) with tritonclient's
wire format (mlapi_client.tensors): it is the hot path, and tritonclient.http.aio both costs
more (aiohttp) and drops the response headers, where a Retry-After from a proxy or gateway in front
of Triton must reach the retry logic. generate_stream (SSE), which tritonclient.http.aio does
not support at all, goes through an aiohttp session.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy.typing as npt
import tritonclient.http.aio as httpaio

from mlapi_client import access
from mlapi_client.error_mapping import HttpStatusError, StreamError
from mlapi_client.http_pool import HttpPool, Reply
from mlapi_client.results import InferResponse
from mlapi_client.settings import Endpoint
from mlapi_client.tensors import from_json_event, http_infer_body, http_infer_response, json_value
from mlapi_client.transport import Parameters


class HttpTransport:
    """The Transport over HTTP: a connection pool for inference, aiohttp for streams."""

    def __init__(self, endpoint: Endpoint, triton_key: str | None = None) -> None:
        self._base = endpoint.url
        self._key_headers = access.http_headers(triton_key)
        # The headers of an all-JSON infer body, and of a JSON header followed by tensors.
        self._json_headers = {"Content-Type": "application/json", **self._key_headers}
        self._binary_headers = {"Content-Type": "application/octet-stream", **self._key_headers}
        self._pool = HttpPool(endpoint.address, tls=endpoint.ssl)
        self._infer_paths: dict[tuple[str, str], str] = {}
        # Timeouts are applied per call by the client (asyncio), so the sessions have none.
        self._triton = httpaio.InferenceServerClient(
            endpoint.address, ssl=endpoint.ssl, conn_timeout=None
        )
        self._triton.register_plugin(access.KeyPlugin(triton_key, "http"))
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            headers=self._key_headers,
        )

    async def close(self) -> None:
        await self._pool.close()
        await self._session.close()
        await self._triton.close()

    async def is_live(self) -> bool:
        return bool(await self._triton.is_server_live())

    async def is_ready(self, model: str | None, version: str) -> bool:
        if model is None:
            return bool(await self._triton.is_server_ready())
        return bool(await self._triton.is_model_ready(model, version))

    async def repository_index(self) -> list[dict[str, Any]]:
        return list(await self._triton.get_model_repository_index())

    async def load_model(
        self, model: str, config: Mapping[str, Any] | None, files: Mapping[str, bytes] | None
    ) -> None:
        await self._triton.load_model(
            model,
            config=json.dumps(config) if config is not None else None,
            files=dict(files) if files else None,
        )

    async def unload_model(self, model: str, unload_dependents: bool) -> None:
        await self._triton.unload_model(model, unload_dependents=unload_dependents)

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        return dict(await self._triton.get_model_metadata(model, version))

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        return dict(await self._triton.get_model_config(model, version))

    async def inference_statistics(self, model: str, version: str) -> dict[str, Any]:
        return dict(await self._triton.get_inference_statistics(model, version))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str,
        outputs: Sequence[str] | None,
        parameters: Parameters | None,
        timeout_s: float | None,
        request_id: str | None = None,
    ) -> InferResponse:
        # request_id: the KServe "id" member ("" leaves it out).
        body, json_size = http_infer_body(inputs, outputs, request_id or "", parameters)
        headers = self._json_headers
        if json_size is not None:  # a JSON header followed by binary tensors
            headers = {
                **self._binary_headers,
                "Inference-Header-Content-Length": str(json_size),
            }
        path = self._infer_paths.get((model, version))
        if path is None:  # quoted once per model and version
            path = self._infer_paths[(model, version)] = self._path(model, version, "infer")
        reply = await self._pool.request("POST", path, headers, body)
        if reply.status != 200:
            raise _failure(reply, reply.body)
        return http_infer_response(
            reply.body,
            reply.headers.get("Inference-Header-Content-Length"),
            reply.headers.get("Content-Encoding"),
        )

    async def stream(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str,
        parameters: Parameters | None,
        timeout_s: float | None,
        request_id: str | None = None,
    ) -> AsyncGenerator[InferResponse, None]:
        """generate_stream: one SSE event per response. Leaving early closes the connection."""
        body: dict[str, Any] = {name: json_value(name, array) for name, array in inputs.items()}
        if request_id:
            body["id"] = request_id  # the generate extension's request id
        if parameters:
            body["parameters"] = dict(parameters)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        reply = await self._session.post(
            self._url(model, version, "generate_stream"), json=body, timeout=timeout
        )
        try:
            if reply.status != 200:
                raise _failure(reply, await reply.read())
            async for data in _sse_data(reply.content):
                event = json.loads(data)
                if "error" in event:  # errors after the first event arrive with status 200
                    raise StreamError(event["error"])
                yield from_json_event(event)
        finally:
            # Closing (not releasing) drops the connection, so an unfinished stream is not reused.
            reply.close()

    def _url(self, model: str, version: str, action: str) -> str:
        return f"{self._base}{self._path(model, version, action)}"

    @staticmethod
    def _path(model: str, version: str, action: str) -> str:
        versioned = f"/versions/{quote(version, safe='')}" if version else ""
        return f"/v2/models/{quote(model, safe='')}{versioned}/{action}"


async def _sse_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Yield the ``data:`` payload of each server-sent event."""
    lines: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.startswith("data:"):
            lines.append(line[5:].lstrip(" "))
        elif not line and lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def _failure(reply: aiohttp.ClientResponse | Reply, payload: bytes) -> HttpStatusError:
    text = payload.decode("utf-8", "replace").strip()
    if text.startswith("data:"):  # generate_stream sends its first error as an SSE event
        text = text[5:].strip()
    try:
        message = str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        message = text or reply.reason or ""
    return HttpStatusError(reply.status, message, retry_after_s(reply.headers.get("Retry-After")))


def retry_after_s(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now_s = time.time() if now_s is None else now_s
    return max(0.0, when.timestamp() - now_s)
