"""What the gateway uses of Triton: the client surface, and reads cached between refreshes.

``TritonClient`` lists the calls of ``mlapi_client.AsyncClient`` that the gateway makes, so a
test can hand the app a small fake (``create_app(settings, services)``) instead of a server.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    async def model_config(self, model: str, wait_s: float | None = None) -> dict[str, Any]: ...


class Cached:
    """Values re-read at most every ``ttl_s`` seconds, never in a caller's way once known.

    One read per key at a time:

    - Fresh value: returned as is.
    - Stale value: one read refreshes it; callers wait for that read at most
      ``stale_wait_s``, then get the stale value, so a slow or failing Triton costs requests
      little once a value was read (a config, a contract and a traffic status change rarely,
      and a request that no longer fits them is refused by Triton itself).
    - No value yet: callers share one read, each waiting at most its own ``wait_s``.
    - A failed read is remembered for ``failure_ttl_s``: callers meanwhile get the stale value,
      or that same error, instead of one more read each.
    """

    def __init__(
        self, ttl_s: float, failure_ttl_s: float = 1.0, stale_wait_s: float = 0.25
    ) -> None:
        self.ttl_s = ttl_s
        self.failure_ttl_s = failure_ttl_s
        self.stale_wait_s = stale_wait_s
        self._values: dict[Any, tuple[float, Any]] = {}
        self._failures: dict[Any, tuple[float, BaseException]] = {}
        self._reads: dict[Any, asyncio.Future[Any]] = {}

    async def get(
        self, key: Any, load: Callable[[], Awaitable[T]], wait_s: float | None = None
    ) -> T:
        """Return the value of ``key`` (see the class); TimeoutError after ``wait_s`` unread."""
        now = time.monotonic()
        hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]  # type: ignore[no-any-return]
        failed = self._failures.get(key)
        if failed is not None and now - failed[0] < self.failure_ttl_s:
            if hit is not None:
                return hit[1]  # type: ignore[no-any-return]
            raise failed[1]
        read = self._reads.get(key)
        if read is None:
            read = self._reads[key] = asyncio.ensure_future(self._read(key, load))
        if hit is not None:
            # Stale: wait briefly for the fresh value (a read takes a millisecond when Triton
            # is well), else answer with the stale one while the read goes on.
            bound = self.stale_wait_s if wait_s is None else min(wait_s, self.stale_wait_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(read), bound)
            return self._values[key][1]  # type: ignore[no-any-return]
        await asyncio.wait_for(asyncio.shield(read), wait_s)
        failed = self._failures.get(key)
        if key not in self._values and failed is not None:
            raise failed[1]
        return self._values[key][1]  # type: ignore[no-any-return]

    async def _read(self, key: Any, load: Callable[[], Awaitable[Any]]) -> None:
        try:
            self._values[key] = (time.monotonic(), await load())
            self._failures.pop(key, None)
        except Exception as exc:  # remembered, raised to this read's callers
            self._failures[key] = (time.monotonic(), exc)
        finally:
            self._reads.pop(key, None)

    def forget(self, key: Any) -> None:
        """Drop what is known of ``key``: the next ``get`` reads it again."""
        self._values.pop(key, None)
        self._failures.pop(key, None)
