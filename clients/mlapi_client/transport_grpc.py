"""gRPC transport over tritonclient.grpc.aio (infer, bidirectional streaming, metadata)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy.typing as npt
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from mlapi_client import access
from mlapi_client.error_mapping import ChannelUnreachableError, StreamError
from mlapi_client.results import InferResponse
from mlapi_client.settings import Endpoint
from mlapi_client.tensors import grpc_response, infer_inputs, requested_outputs
from mlapi_client.transport import Parameters

T = TypeVar("T")
# Triton 24.08+ accepts {"triton_grpc_error": "true"} to turn stream errors into real gRPC
# statuses. Not sent: on 2.51 every such stream logs "HandleCancellation called even when the
# context was not cancelled", and a test run saw the server crash right after a few of them.
# Stream errors are mapped from the response's error_message instead (error_mapping).
_STREAM_HEADERS: dict[str, str] = {}


class GrpcTransport:
    """The Transport over gRPC: tritonclient.grpc.aio, one channel per client."""

    def __init__(self, endpoint: Endpoint, triton_key: str | None = None) -> None:
        self._client = grpcaio.InferenceServerClient(endpoint.address, ssl=endpoint.ssl)
        self._client.register_plugin(access.KeyPlugin(triton_key, "grpc"))

    async def close(self) -> None:
        await self._client.close()

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except InferenceServerException as exc:
            # UNAVAILABLE is both "server not there" and "model busy"; the channel tells which.
            if exc.status() == "StatusCode.UNAVAILABLE" and not self._connected():
                raise ChannelUnreachableError(exc.message()) from exc
            raise
        except grpc.RpcError as exc:  # the stream iterator raises grpc's own errors
            if exc.code() == grpc.StatusCode.UNAVAILABLE and not self._connected():
                raise ChannelUnreachableError(exc.details()) from exc
            raise

    def _connected(self) -> bool:
        channel = self._client._channel  # tritonclient 2.51 exposes no accessor
        return bool(channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY)

    async def _why_refused(self, model: str, version: str) -> None:
        """Raise the server's own reason for refusing a stream at once, if a unary call has one.

        A server that refuses a stream before reading it (e.g. Triton without the access key)
        can close it while grpc's core still writes the request: the caller then sees only
        INTERNAL "Internal error from Core", not the status the server sent.
        """
        await self._call(self._client.get_model_metadata(model, version))

    async def is_live(self) -> bool:
        return bool(await self._call(self._client.is_server_live()))

    async def is_ready(self, model: str | None, version: str) -> bool:
        if model is None:
            return bool(await self._call(self._client.is_server_ready()))
        return bool(await self._call(self._client.is_model_ready(model, version)))

    async def repository_index(self) -> list[dict[str, Any]]:
        index = await self._call(self._client.get_model_repository_index(as_json=True))
        return list(index.get("models", []))

    async def load_model(
        self, model: str, config: Mapping[str, Any] | None, files: Mapping[str, bytes] | None
    ) -> None:
        await self._call(
            self._client.load_model(
                model,
                config=json.dumps(config) if config is not None else None,
                files=dict(files) if files else None,
            )
        )

    async def unload_model(self, model: str, unload_dependents: bool) -> None:
        await self._call(self._client.unload_model(model, unload_dependents=unload_dependents))

    async def model_metadata(self, model: str, version: str) -> dict[str, Any]:
        metadata = await self._call(self._client.get_model_metadata(model, version, as_json=True))
        for tensor in (*metadata.get("inputs", []), *metadata.get("outputs", [])):
            tensor["shape"] = [int(dim) for dim in tensor.get("shape", [])]
        return dict(metadata)

    async def model_config(self, model: str, version: str) -> dict[str, Any]:
        config = await self._call(self._client.get_model_config(model, version, as_json=True))
        return dict(config.get("config", {}))

    async def inference_statistics(self, model: str, version: str) -> dict[str, Any]:
        reply = await self._call(
            self._client.get_inference_statistics(model, version, as_json=True)
        )
        return {"model_stats": [_integers(entry) for entry in reply.get("model_stats", [])]}

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
        # client_timeout is the gRPC deadline: the server sees it and cancels the request.
        result = await self._call(
            self._client.infer(
                model,
                infer_inputs(grpcclient, inputs),
                model_version=version,
                outputs=requested_outputs(grpcclient, outputs),
                request_id=request_id or "",
                parameters=dict(parameters) if parameters else None,
                client_timeout=timeout_s,
            )
        )
        return grpc_response(result)

    async def stream(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str,
        parameters: Parameters | None,
        timeout_s: float | None,
        request_id: str | None = None,
    ) -> AsyncGenerator[InferResponse, None]:
        """ModelStreamInfer with one request; leaving early cancels the call on the server."""
        request = {
            "model_name": model,
            "inputs": infer_inputs(grpcclient, inputs),
            "model_version": version,
            "request_id": request_id or "",
            # An empty final response marks the end of this request's responses.
            "parameters": {**(parameters or {}), "triton_enable_empty_final_response": True},
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request

        responses = self._client.stream_infer(
            requests(), stream_timeout=timeout_s, headers=_STREAM_HEADERS
        )
        finished = False
        answered = False
        try:
            while not finished:
                try:
                    result, error = await self._call(responses.__anext__())
                except StopAsyncIteration:
                    return
                except grpc.RpcError as exc:
                    if answered or exc.code() != grpc.StatusCode.INTERNAL:
                        raise
                    await self._why_refused(model, version)
                    raise
                except asyncio.CancelledError as exc:
                    # grpc.aio raises CancelledError when the call was cancelled on this side,
                    # e.g. by a request its iterator failed to build; only a cancellation of
                    # the caller's own task is the caller's to see as one.
                    task = asyncio.current_task()
                    if task is None or getattr(task, "cancelling", lambda: 1)():
                        raise
                    raise StreamError("the stream was cancelled before Triton answered") from exc
                answered = True
                if error is not None:
                    raise StreamError(error.message())
                proto = result.get_response()
                finished = proto.parameters["triton_final_response"].bool_param
                if proto.outputs:
                    yield grpc_response(result)
        finally:
            if not finished:
                responses.cancel()


# Fields of Triton's statistics messages that are text; every other scalar is a counter.
_TEXT_FIELDS = frozenset({"name", "version", "type"})


def _integers(message: Any, key: str = "") -> Any:
    """Give a statistics message the HTTP reply's integers (protobuf's JSON writes uint64 as text)."""
    if isinstance(message, dict):
        return {k: _integers(v, k) for k, v in message.items()}
    if isinstance(message, list):
        return [_integers(v, key) for v in message]
    if isinstance(message, str) and key not in _TEXT_FIELDS and message.isdigit():
        return int(message)
    return message
