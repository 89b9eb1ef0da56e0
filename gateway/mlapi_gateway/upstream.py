"""What the gateway uses of Triton: the client surface, and reads cached between refreshes.

``TritonClient`` lists the calls of ``mlapi_client.AsyncClient`` that the gateway makes, so a
test can hand the app a small fake (``create_app(settings, services)``) instead of a server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from mlapi_client.results import DigitsResult, InferResponse, ModelContract, ModelEntry
from mlapi_gateway.settings import GatewaySettings

T = TypeVar("T")
Parameters = Mapping[str, int | float | str | bool]


class TritonClient(Protocol):
    """The calls of ``mlapi_client.AsyncClient`` the gateway makes (and a fake must answer)."""

    async def close(self) -> None: ...

    async def is_ready(self, *, timeout_s: float | None = ..., retry: bool = ...) -> bool: ...

    async def list_models(
        self, *, timeout_s: float | None = ..., retry: bool = ...
    ) -> list[ModelEntry]: ...

    async def live_versions(self, model: str, *, retry: bool | None = ...) -> list[str]: ...

    async def model_config(
        self, model: str, version: str | None = ..., *, retry: bool = ...
    ) -> dict[str, Any]: ...

    async def contract(
        self, model: str, version: str | None = ..., *, retry: bool = ...
    ) -> ModelContract: ...

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str | None = ...,
        *,
        parameters: Parameters | None = ...,
        timeout_s: float | None = ...,
        retry: bool = ...,
        request_id: str | None = ...,
    ) -> InferResponse: ...

    async def digits(
        self,
        image: npt.NDArray[np.uint8],
        *,
        top_k: int | None = ...,
        version: str | None = ...,
        timeout_s: float | None = ...,
        retry: bool = ...,
        request_id: str | None = ...,
    ) -> DigitsResult: ...

    def stream(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str | None = ...,
        *,
        parameters: Parameters | None = ...,
        timeout_s: float | None = ...,
        request_id: str | None = ...,
    ) -> AsyncIterator[InferResponse]: ...


class Upstream(Protocol):
    """The gateway core as an adapter sees it: settings, clients, translated cached reads."""

    settings: GatewaySettings
    client: TritonClient
    stream_client: TritonClient

    def translated(
        self, model: str, version: str | None = None
    ) -> AbstractContextManager[None]: ...

    async def contract(self, model: str, version: str | None = None) -> ModelContract: ...

    async def model_config(self, model: str) -> dict[str, Any]: ...


class Cached:
    """Values re-read at most every ``ttl_s`` seconds, one read at a time."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[Any, tuple[float, Any]] = {}
        self._lock = asyncio.Lock()

    async def get(self, key: Any, load: Callable[[], Awaitable[T]]) -> T:
        """Return the value of ``key``, loading it when absent or older than ``ttl_s``."""
        hit = self._values.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]  # type: ignore[no-any-return]
        async with self._lock:
            hit = self._values.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
                return hit[1]  # type: ignore[no-any-return]
            value = await load()
            self._values[key] = (time.monotonic(), value)
            return value
