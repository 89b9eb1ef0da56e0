"""The synchronous client: a facade that runs ``AsyncClient`` on a private event-loop thread.

Every blocking method is generated from its async twin by ``_blocking``, so the two surfaces
cannot drift. Because all I/O happens on the one loop thread, a ``Client`` may be shared by
threads (unlike tritonclient.http's client).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy.typing as npt

from mlapi_client.async_client import AsyncClient, Retry
from mlapi_client.coalesce import Coalescing
from mlapi_client.results import InferResponse
from mlapi_client.settings import DEFAULT_TIMEOUT_S, ClientSettings, Protocol, RetryPolicy
from mlapi_client.transport import Parameters

P = ParamSpec("P")
R = TypeVar("R")


class _LoopThread:
    """An event loop running forever in a daemon thread; coroutines are submitted to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="mlapi-client-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                "a blocking mlapi_client.Client call cannot run on its own loop thread"
            )
        future: Future[R] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _blocking(
    method: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Client, P], R]:
    """Generate the blocking form of an ``AsyncClient`` method (same parameters and docstring)."""

    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._loop.run(method(self._async, *args, **kwargs))

    functools.update_wrapper(call, method)  # name, docstring, signature (``__wrapped__``)
    return call


class Client:
    """Calls the project's models on Triton over HTTP or gRPC, blocking until each answer.

    Same constructor and methods as ``AsyncClient`` (see there); use it as a context manager
    or call ``close()``.
    """

    def __init__(
        self,
        url: str = "localhost:8000",
        *,
        protocol: Protocol | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        triton_key: str | None = None,
        coalesce: Coalescing | None = None,
    ) -> None:
        self._async = AsyncClient(
            url,
            protocol=protocol,
            timeout_s=timeout_s,
            retry=retry,
            triton_key=triton_key,
            coalesce=coalesce,
        )
        self._loop = _LoopThread()
        self._finalizer = weakref.finalize(self, self._loop.stop)

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> Client:
        return cls(
            settings.endpoint.url,
            timeout_s=settings.timeout_s,
            retry=settings.retry,
            triton_key=settings.triton_key,
        )

    @property
    def settings(self) -> ClientSettings:
        return self._async.settings

    @property
    def protocol(self) -> Protocol:
        return self._async.protocol

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._finalizer.alive:
            try:
                self._loop.run(self._async.close())
            finally:
                self._finalizer()

    is_live = _blocking(AsyncClient.is_live)
    is_ready = _blocking(AsyncClient.is_ready)
    list_models = _blocking(AsyncClient.list_models)
    live_versions = _blocking(AsyncClient.live_versions)
    contract = _blocking(AsyncClient.contract)
    model_config = _blocking(AsyncClient.model_config)
    inference_statistics = _blocking(AsyncClient.inference_statistics)
    load_model = _blocking(AsyncClient.load_model)
    unload_model = _blocking(AsyncClient.unload_model)
    infer = _blocking(AsyncClient.infer)
    digits = _blocking(AsyncClient.digits)

    def stream(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: int | str | None = None,
        *,
        parameters: Parameters | None = None,
        timeout_s: float | None = None,
        retry: Retry = None,
        request_id: str | None = None,
    ) -> Iterator[InferResponse]:
        """Blocking iterator over ``AsyncClient.stream``; closing it early cancels the stream."""
        responses = self._async.stream(
            model,
            inputs,
            version,
            parameters=parameters,
            timeout_s=timeout_s,
            retry=retry,
            request_id=request_id,
        )
        try:
            while True:
                try:
                    yield self._loop.run(_next(responses))
                except StopAsyncIteration:
                    return
        finally:
            if self._finalizer.alive:
                self._loop.run(responses.aclose())  # type: ignore[attr-defined]


async def _next(responses: AsyncIterator[R]) -> R:
    return await responses.__anext__()
