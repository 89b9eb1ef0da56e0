"""What the async client needs from a protocol; one implementation per protocol."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Protocol

import numpy.typing as npt

from mlapi_client.results import InferResponse
from mlapi_client.settings import Endpoint

Parameters = Mapping[str, Any]


class Transport(Protocol):
    """Raw async calls to Triton; failures are raised as protocol exceptions and translated above."""

    async def close(self) -> None: ...

    async def is_live(self) -> bool: ...

    async def is_ready(self, model: str | None, version: str) -> bool: ...

    async def repository_index(self) -> list[dict[str, Any]]: ...

    async def load_model(
        self, model: str, config: Mapping[str, Any] | None, files: Mapping[str, bytes] | None
    ) -> None: ...

    async def unload_model(self, model: str, unload_dependents: bool) -> None: ...

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]: ...

    async def model_config(self, model: str, version: str) -> dict[str, Any]: ...

    async def inference_statistics(self, model: str, version: str) -> dict[str, Any]: ...

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str,
        outputs: Sequence[str] | None,
        parameters: Parameters | None,
        timeout_s: float | None,
        request_id: str | None = None,
    ) -> InferResponse: ...

    def stream(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str,
        parameters: Parameters | None,
        timeout_s: float | None,
        request_id: str | None = None,
    ) -> AsyncGenerator[InferResponse, None]: ...


def open_transport(endpoint: Endpoint, triton_key: str | None = None) -> Transport:
    """Open a transport for ``endpoint`` sending ``triton_key``, inside the loop that uses it."""
    if endpoint.protocol == "grpc":
        from mlapi_client.transport_grpc import GrpcTransport

        return GrpcTransport(endpoint, triton_key)
    from mlapi_client.transport_http import HttpTransport

    return HttpTransport(endpoint, triton_key)
