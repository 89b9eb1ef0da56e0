"""The two protocols behind one small async interface: tritonclient's gRPC and HTTP asyncio clients.

Request tensors are built once per payload and reused for every request, so the harness spends
its time sending, not re-encoding. Errors are turned into a short *kind* keyed on the status the
server or the transport returned (never on message text), so they can be counted by kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from mlapi_client import access

PROTOCOLS = ("grpc", "http")
# A request that takes longer than this is counted as an error (kind "client_timeout").
CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Endpoint:
    """Where one protocol of one server listens (``host:port``, no scheme)."""

    protocol: str
    url: str

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


class AsyncTriton:
    """One asyncio client of one protocol: infer, statistics, config and model loading."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.module: Any = grpc_aio if endpoint.protocol == "grpc" else http_aio
        if endpoint.protocol == "grpc":
            self.client: Any = access.with_key(grpc_aio.InferenceServerClient(endpoint.url))
        else:
            # aiohttp's default pool (100) would cap closed-loop concurrency silently.
            self.client = access.with_key(
                http_aio.InferenceServerClient(endpoint.url, conn_limit=1024)
            )

    def inputs(self, payload: Mapping[str, np.ndarray]) -> list[Any]:
        tensors = []
        for name, array in payload.items():
            dtype = "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
            tensor = self.module.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    async def infer(
        self,
        model: str,
        inputs: Sequence[Any],
        version: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        params = dict(parameters) if parameters else None
        if self.endpoint.protocol == "grpc":
            await self.client.infer(
                model,
                inputs,
                model_version=version,
                parameters=params,
                client_timeout=CLIENT_TIMEOUT_S,
            )
        else:
            await asyncio.wait_for(
                self.client.infer(model, inputs, model_version=version, parameters=params),
                CLIENT_TIMEOUT_S,
            )

    async def statistics(self, model: str) -> dict[str, Any]:
        if self.endpoint.protocol == "grpc":
            reply: dict[str, Any] = await self.client.get_inference_statistics(model, as_json=True)
        else:
            reply = await self.client.get_inference_statistics(model)
        return reply

    async def model_config(self, model: str) -> dict[str, Any]:
        if self.endpoint.protocol == "grpc":
            reply = await self.client.get_model_config(model, as_json=True)
            return dict(reply.get("config", reply))
        return dict(await self.client.get_model_config(model))

    async def close(self) -> None:
        await self.client.close()


def error_kind(exc: BaseException) -> str:
    """A short, countable name for a failed request: the status, or the transport failure."""
    if isinstance(exc, InferenceServerException):
        status = exc.status()
        if status:
            return f"status {str(status).removeprefix('StatusCode.')}"
        return "server error"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "client_timeout"
    return type(exc).__name__
