"""The asyncio client: the one implementation of every call (the sync ``Client`` wraps it)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy.typing as npt

from mlapi_client import access
from mlapi_client import digits as digits_model
from mlapi_client.coalesce import Coalescer, Coalescing
from mlapi_client.error_mapping import CallContext, not_found_or_unavailable, translated
from mlapi_client.errors import MlapiError, ModelNotFoundError
from mlapi_client.images import ImageLike
from mlapi_client.results import DigitsResult, InferResponse, ModelContract, ModelEntry, TensorSpec
from mlapi_client.retry import call_with_retry
from mlapi_client.settings import (
    DEFAULT_TIMEOUT_S,
    NO_RETRY,
    ClientSettings,
    Endpoint,
    Protocol,
    RetryPolicy,
)
from mlapi_client.tensors import check_parameters
from mlapi_client.transport import Parameters, Transport, open_transport

T = TypeVar("T")
Retry = RetryPolicy | bool | None


class AsyncClient:
    """Calls the project's models on Triton over HTTP or gRPC, from asyncio code.

    ``url`` is ``http://host:8000`` or ``grpc://host:8001`` (or a bare ``host:port`` with
    ``protocol``). One connection pool / channel is opened on first use and reused until
    ``close()`` (or the end of ``async with``). Every call takes ``timeout_s`` (default: the
    client's, 30 s) and ``retry`` (a RetryPolicy, or False to fail on the first error).
    ``triton_key`` is the server's access key (mlapi_client.access); by default it is read from
    ``MLAPI_TRITON_KEY`` or the key file, as the launcher wrote it. ``coalesce`` lets
    concurrent ``infer`` calls of the models it names share Triton requests while Triton is
    busy (mlapi_client.coalesce); off by default.
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
        self._coalescer = Coalescer(coalesce) if coalesce is not None and coalesce.models else None
        self.settings = ClientSettings(
            endpoint=Endpoint.parse(url, protocol),
            timeout_s=timeout_s,
            retry=retry or RetryPolicy(),
            triton_key=triton_key if triton_key is not None else access.read_key(),
        )
        self._transport: Transport | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> AsyncClient:
        return cls(
            settings.endpoint.url,
            timeout_s=settings.timeout_s,
            retry=settings.retry,
            triton_key=settings.triton_key,
        )

    @property
    def protocol(self) -> Protocol:
        return self.settings.endpoint.protocol

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    # --- discovery -------------------------------------------------------------------------

    async def is_live(self, *, timeout_s: float | None = None, retry: Retry = None) -> bool:
        """Whether the server answers its liveness probe (raises ConnectionFailedError if unreachable)."""
        return await self._call(CallContext("is_live"), lambda t: t.is_live(), timeout_s, retry)

    async def is_ready(
        self,
        model: str | None = None,
        version: int | str | None = None,
        *,
        timeout_s: float | None = None,
        retry: Retry = None,
    ) -> bool:
        """Server readiness, or readiness of ``model`` (at ``version``) when given."""
        ver = _version(version)
        context = CallContext("is_ready", model, ver)
        return await self._call(context, lambda t: t.is_ready(model, ver), timeout_s, retry)

    async def list_models(
        self, *, timeout_s: float | None = None, retry: Retry = None
    ) -> list[ModelEntry]:
        """Every model version the repository knows, with its state (READY, UNAVAILABLE, ...)."""
        rows = await self._call(
            CallContext("list_models"), lambda t: t.repository_index(), timeout_s, retry
        )
        return [
            ModelEntry(
                name=row["name"],
                version=row.get("version") or None,
                state=row.get("state") or None,
                reason=row.get("reason") or None,
            )
            for row in rows
        ]

    async def live_versions(
        self, model: str, *, timeout_s: float | None = None, retry: Retry = None
    ) -> list[str]:
        """Return the versions of ``model`` that are loaded and ready, in numeric order."""
        entries = await self.list_models(timeout_s=timeout_s, retry=retry)
        ready = [e.version for e in entries if e.name == model and e.state == "READY" and e.version]
        return sorted(ready, key=lambda v: (len(v), v))

    async def model_config(
        self,
        model: str,
        version: int | str | None = None,
        *,
        timeout_s: float | None = None,
        retry: Retry = None,
    ) -> dict[str, Any]:
        """Return the served config of ``model`` as Triton's JSON (parameters, batching, ...)."""
        ver = _version(version)
        context = CallContext("model_config", model, ver)
        return await self._call(context, lambda t: t.model_config(model, ver), timeout_s, retry)

    async def inference_statistics(
        self,
        model: str = "",
        version: int | str | None = None,
        *,
        timeout_s: float | None = None,
        retry: Retry = None,
    ) -> dict[str, Any]:
        """Return Triton's cumulative statistics of ``model`` (every model when empty).

        The reply is ``{"model_stats": [...]}`` with one entry per model version: counts and
        nanosecond totals of the queue and compute phases, inference and execution counts
        (KServe statistics extension; counters are integers over gRPC too).
        """
        ver = _version(version)
        context = CallContext("inference_statistics", model or None, ver)
        return await self._call(
            context, lambda t: t.inference_statistics(model, ver), timeout_s, retry
        )

    async def load_model(
        self,
        model: str,
        config: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        *,
        timeout_s: float | None = None,
        retry: Retry = False,
    ) -> None:
        """Load (or reload) ``model`` through the repository API, optionally overriding its config.

        Needs the server's access key. A refused load keeps the previous model serving (Triton);
        never retried by default, since a load is not idempotent in time.
        """
        context = CallContext("load_model", model)
        await self._call(context, lambda t: t.load_model(model, config, files), timeout_s, retry)

    async def unload_model(
        self,
        model: str,
        *,
        unload_dependents: bool = False,
        timeout_s: float | None = None,
        retry: Retry = False,
    ) -> None:
        """Unload every version of ``model`` (Triton waits for its in-flight requests)."""
        context = CallContext("unload_model", model)
        await self._call(
            context, lambda t: t.unload_model(model, unload_dependents), timeout_s, retry
        )

    async def contract(
        self,
        model: str,
        version: int | str | None = None,
        *,
        timeout_s: float | None = None,
        retry: Retry = None,
    ) -> ModelContract:
        """Return the tensors ``model`` takes and returns, its versions, batching, streaming mode."""
        ver = _version(version)
        context = CallContext("contract", model, ver)

        async def both(transport: Transport) -> tuple[dict[str, Any], dict[str, Any]]:
            return await transport.model_metadata(model, ver), await transport.model_config(
                model, ver
            )

        metadata, config = await self._call(context, both, timeout_s, retry)
        optional = {t["name"] for t in config.get("input", []) if t.get("optional")}
        return ModelContract(
            name=metadata["name"],
            versions=tuple(str(v) for v in metadata.get("versions", [])),
            platform=metadata.get("platform", ""),
            max_batch_size=int(config.get("max_batch_size", 0)),
            decoupled=bool(config.get("model_transaction_policy", {}).get("decoupled", False)),
            inputs=tuple(_spec(t, t["name"] in optional) for t in metadata.get("inputs", [])),
            outputs=tuple(_spec(t, False) for t in metadata.get("outputs", [])),
        )

    # --- inference -------------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: int | str | None = None,
        outputs: Sequence[str] | None = None,
        *,
        parameters: Parameters | None = None,
        timeout_s: float | None = None,
        retry: Retry = None,
        request_id: str | None = None,
    ) -> InferResponse:
        """Run any model: tensors by name in, tensors by name out (all outputs unless ``outputs``).

        ``version`` uses Triton's versioned endpoint (``/v2/models/<m>/versions/<n>``).
        ``request_id`` becomes the inference request's id on Triton (KServe ``id``): Triton's
        logs and traces then name the caller's request.
        """
        check_parameters(parameters)
        ver = _version(version)
        context = CallContext("infer", model, ver)
        limit = self._timeout(timeout_s)
        coalescer = self._coalescer
        kind = (
            None
            if coalescer is None
            else coalescer.kind_of(model, inputs, ver, outputs, parameters)
        )
        if coalescer is None or kind is None:
            return await self._call(
                context,
                lambda t: t.infer(model, inputs, ver, outputs, parameters, limit, request_id),
                timeout_s,
                retry,
            )

        def shared(transport: Transport) -> Awaitable[InferResponse]:
            def send(
                tensors: Mapping[str, npt.NDArray[Any]], limit_s: float | None, rid: str | None
            ) -> Awaitable[InferResponse]:
                return transport.infer(model, tensors, ver, outputs, parameters, limit_s, rid)

            return coalescer.call(kind[0], kind[1], inputs, limit, request_id, send)

        return await self._call(context, shared, timeout_s, retry)

    async def digits(
        self,
        image: ImageLike,
        *,
        top_k: int | None = None,
        version: int | str | None = None,
        timeout_s: float | None = None,
        retry: Retry = None,
        request_id: str | None = None,
    ) -> DigitsResult:
        """Classify one digit image (array, PIL image, path or PNG/JPEG bytes).

        ``version`` pins the classifier version through the request parameter ``model_version``;
        the result's ``model_version`` is the version that actually served the request.
        """
        inputs = digits_model.digits_inputs(image, top_k)
        response = await self.infer(
            digits_model.MODEL,
            inputs,
            parameters=digits_model.digits_parameters(version),
            timeout_s=timeout_s,
            retry=retry,
            request_id=request_id,
        )
        return digits_model.digits_result(response)

    async def stream(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: int | str | None = None,
        *,
        parameters: Parameters | None = None,
        timeout_s: float | None = None,
        retry: Retry = None,
        request_id: str | None = None,
    ) -> AsyncIterator[InferResponse]:
        """Responses of a decoupled (streaming) model as they arrive.

        gRPC uses ModelStreamInfer, HTTP uses generate_stream (server-sent events; inputs must be
        JSON-representable). Stopping early (``break``, ``aclose()``, cancellation) cancels the
        gRPC call / closes the HTTP connection. ``timeout_s`` bounds the whole stream (default:
        none). A failure before the first response is retried like any call; once responses
        flow, a failure ends the stream (responses are never replayed). ``request_id`` is the
        request's id on Triton, as for ``infer``.
        """
        check_parameters(parameters)
        ver = _version(version)
        context = CallContext("stream", model, ver, timeout_s)

        async def first_response() -> tuple[
            AsyncGenerator[InferResponse, None], InferResponse | None
        ]:
            responses = self._ensure_transport().stream(
                model, inputs, ver, parameters, timeout_s, request_id
            )
            try:
                async with translated(context):
                    return responses, await anext(responses, None)
            except BaseException:
                await responses.aclose()
                raise

        responses, first = await call_with_retry(first_response, self._policy(retry))
        try:
            if first is None:
                return
            yield first
            async with translated(context):
                async for response in responses:
                    yield response
        finally:
            await responses.aclose()

    # --- plumbing --------------------------------------------------------------------------

    async def _call(
        self,
        context: CallContext,
        operation: Callable[[Transport], Awaitable[T]],
        timeout_s: float | None,
        retry: Retry,
    ) -> T:
        limit = self._timeout(timeout_s)
        # Built directly: dataclasses.replace, which walks the fields, costs ~1.5 us more.
        context = CallContext(context.operation, context.model, context.version, limit)

        async def attempt() -> T:
            try:
                async with translated(context):
                    return await _within(operation(self._ensure_transport()), limit)
            except ModelNotFoundError as error:
                if context.model is None:
                    raise
                refined = await self._not_found_or_unavailable(error, context)
                if refined is error:
                    raise
                raise refined from error

        return await call_with_retry(attempt, self._policy(retry))

    async def _not_found_or_unavailable(
        self, error: ModelNotFoundError, context: CallContext
    ) -> MlapiError:
        try:
            async with translated(context):
                index = await asyncio.wait_for(
                    self._ensure_transport().repository_index(), context.timeout_s
                )
        except MlapiError:
            return error
        return not_found_or_unavailable(error, index, context)

    def _ensure_transport(self) -> Transport:
        if self._closed:
            raise MlapiError("the client is closed")
        if self._transport is None:
            # Opened lazily so it binds to the event loop that uses it.
            self._transport = open_transport(self.settings.endpoint, self.settings.triton_key)
        return self._transport

    def _timeout(self, timeout_s: float | None) -> float:
        limit = self.settings.timeout_s if timeout_s is None else timeout_s
        if limit <= 0:
            raise ValueError("timeout_s must be positive")
        return limit

    def _policy(self, retry: Retry) -> RetryPolicy:
        if retry is None or retry is True:
            return self.settings.retry
        if retry is False:
            return NO_RETRY
        return retry


def _version(version: int | str | None) -> str:
    return "" if version is None else str(version)


def _spec(tensor: dict[str, Any], optional: bool) -> TensorSpec:
    return TensorSpec(
        name=tensor["name"],
        datatype=tensor["datatype"],
        shape=tuple(int(d) for d in tensor.get("shape", [])),
        optional=optional,
    )


async def _within(call: Awaitable[T], limit_s: float | None) -> T:
    """Await ``call`` with a deadline (TimeoutError past it)."""
    if sys.version_info >= (3, 11):
        # asyncio.timeout cancels in place; wait_for (3.10) wraps the call in an extra task,
        # a loop iteration more per call on the gateway's hot path.
        async with asyncio.timeout(limit_s):
            return await call
    return await asyncio.wait_for(call, limit_s)  # pragma: no cover - Python 3.10
