"""The gateway core's door to Triton.

It holds the clients, translates their errors, caches discovery, and hands each call to the
model's adapter. It also builds the caches of predictions and gives each covered adapter its
own (docs/caching.md): the adapters' ``predict`` and ``stream`` use them, so every route and
the job runner share them.

Each worker holds two clients of the library: one for unary calls, HTTP by default (its
keep-alive connections answer a digits call about 0.3 ms sooner than gRPC's Python client,
measured interleaved on the same server; settings.triton_infer_protocol), and one gRPC
channel for streams (ModelStreamInfer: a cancel reaches the model within a decode step).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from mlapi_backend.traffic_policy import default_version
from mlapi_client import errors as client_errors
from mlapi_client.async_client import AsyncClient
from mlapi_client.coalesce import Coalescing
from mlapi_client.results import ModelContract
from mlapi_gateway import errors
from mlapi_gateway.adapters import ModelAdapter, adapters_for
from mlapi_gateway.cache.exact import ExactCache
from mlapi_gateway.cache.semantic import SemanticCache
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.upstream import Cached, TritonClient

log = logging.getLogger(__name__)


class Inference:
    """What the routes and the job runner call; every client error leaves as a GatewayError.

    ``client`` (and ``stream_client``, by default the same) replace the clients of the
    settings, e.g. with a fake in tests.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        client: TritonClient | None = None,
        stream_client: TritonClient | None = None,
    ) -> None:
        self.settings = settings
        self.client: TritonClient
        self.stream_client: TritonClient
        if client is not None:
            self.client = client
            self.stream_client = stream_client or client
        else:
            coalesce = Coalescing(
                frozenset(settings.coalesce_models),
                settings.coalesce_max_rows,
                settings.coalesce_max_in_flight,
                frozenset(settings.coalesce_uniform_inputs),
            )
            self.stream_client = AsyncClient(
                f"grpc://{settings.triton_grpc_url}",
                timeout_s=settings.deadline_s,
                coalesce=coalesce,
            )
            self.client = self.stream_client  # with triton_infer_protocol grpc: one channel
            if settings.triton_infer_protocol == "http":
                self.client = AsyncClient(
                    f"http://{settings.triton_http_url}",
                    timeout_s=settings.deadline_s,
                    coalesce=coalesce,
                )
        self._contracts = Cached(settings.metadata_cache_s)
        self._configs = Cached(settings.metadata_cache_s)
        self.adapters = adapters_for(settings.models, self)
        self.exact_cache = ExactCache(settings)
        self.semantic_cache = SemanticCache(settings, self)
        for name, adapter in self.adapters.items():
            if self.exact_cache.covers(name):
                adapter.exact_cache = self.exact_cache
            if name in settings.semantic_cache_models:
                adapter.semantic_cache = self.semantic_cache

    async def close(self) -> None:
        for adapter in self.adapters.values():
            await adapter.close()
        await self.exact_cache.close()
        await self.stream_client.close()
        if self.client is not self.stream_client:
            await self.client.close()

    # --- translation ---------------------------------------------------------------------

    @contextlib.contextmanager
    def translated(self, model: str, version: str | None = None) -> Iterator[None]:
        """Raise client errors as gateway errors (keyed on the classes, never the message)."""
        try:
            yield
        except client_errors.MlapiError as exc:
            raise self._translation(exc, model, version) from exc

    def _translation(
        self, exc: client_errors.MlapiError, model: str, version: str | None
    ) -> errors.GatewayError:
        if isinstance(exc, client_errors.InvalidInputError):
            field = f"body.{exc.field}" if exc.field else "body"
            return errors.RequestInvalidError(
                f"model '{model}' refused the input",
                [errors.FieldError(field, exc.message, exc.expected)],
            )
        if isinstance(exc, client_errors.ModelNotFoundError):
            if version:
                return errors.NotFoundError(f"model '{model}' has no version '{version}'")
            return errors.NotFoundError(
                f"model '{model}' is not on the server", self.settings.models
            )
        if isinstance(exc, client_errors.UnsupportedRequestError):
            return errors.RequestInvalidError(
                f"model '{model}' does not support this call: {exc.message}",
                [errors.FieldError("path.model", "use /stream for streaming models")],
            )
        if isinstance(
            exc, (client_errors.ModelUnavailableError, client_errors.ConnectionFailedError)
        ):
            hint = getattr(exc, "retry_after_s", None)
            retry = max(self.settings.retry_after_s, int(hint or 0))
            return errors.UnavailableError(
                f"model '{model}' cannot serve now ({type(exc).__name__}); retry later", retry
            )
        if isinstance(exc, client_errors.AccessDeniedError):
            # The gateway's own configuration, not the caller's request nor the model; the
            # error handler logs it (once, at error level, with the cause and the request id).
            return errors.AccessKeyRefusedError(
                "the gateway cannot call Triton now (its access key was refused); retry later",
                self.settings.retry_after_s,
            )
        if isinstance(exc, client_errors.InferenceTimeoutError):
            return errors.DeadlineExceededError(
                f"model '{model}' did not answer within the deadline: send a smaller input, "
                "raise ?timeout_s= (up to the gateway's maximum), or use the async route "
                "POST /v1/jobs and poll GET /v1/jobs/{id}"
            )
        return errors.ModelFailedError(f"model '{model}' failed: {exc.message}")

    def deadline(self, timeout_s: float | None) -> float:
        """Return the deadline of a request: the default, or its ``timeout_s`` within bounds."""
        if timeout_s is None:
            return self.settings.deadline_s
        low, high = self.settings.deadline_min_s, self.settings.deadline_max_s
        if not low <= timeout_s <= high:
            raise errors.RequestInvalidError(
                "timeout_s is out of range",
                [
                    errors.FieldError(
                        "query.timeout_s", f"got {timeout_s}", f"{low} to {high} seconds"
                    )
                ],
            )
        return timeout_s

    def adapter(self, model: str) -> ModelAdapter:
        """Return the adapter of an exposed model, or raise NotFoundError naming the exposed ones."""
        adapter = self.adapters.get(model)
        if adapter is None:
            raise errors.NotFoundError(f"no model '{model}' on this API", self.settings.models)
        return adapter

    # --- discovery -----------------------------------------------------------------------

    async def contract(self, model: str, version: str | None = None) -> ModelContract:
        """Return the tensors ``model`` takes and returns (cached for metadata_cache_s)."""

        async def load() -> ModelContract:
            with self.translated(model, version):
                return await self.client.contract(model, version, retry=False)

        return await self._contracts.get((model, version), load)

    async def model_config(self, model: str, wait_s: float | None = None) -> dict[str, Any]:
        """Return the served config of ``model`` (cached for metadata_cache_s).

        ``wait_s`` bounds the wait when no config was read yet (TimeoutError after it).
        """

        async def load() -> dict[str, Any]:
            with self.translated(model):
                return await self.client.model_config(model, retry=False)

        return await self._configs.get(model, load, wait_s)

    async def discover(self, timeout_s: float) -> None:
        """Let every adapter read its model's config once; a model not there yet is logged.

        Requests re-read the configs anyway; this makes /openapi.json name the models' limits
        from the start.
        """

        async def one(adapter: ModelAdapter) -> None:
            try:
                async with asyncio.timeout(timeout_s):
                    await adapter.discover()
            except (errors.GatewayError, TimeoutError) as exc:
                log.warning(
                    "model '%s': config not read at start (%s: %s); requests will read it",
                    adapter.name, type(exc).__name__, exc,
                )  # fmt: skip

        await asyncio.gather(*(one(adapter) for adapter in self.adapters.values()))

    async def list_models(self) -> list[dict[str, Any]]:
        """Return the exposed models on the server with their versions and states."""
        with self.translated("*"):
            entries = await self.client.list_models(retry=False)
        out = []
        for name, adapter in self.adapters.items():
            rows = [e for e in entries if e.name == name]
            if not rows:
                continue
            live = sorted({e.version or "" for e in rows if e.state == "READY"} - {""}, key=_num)
            info: dict[str, Any] = {
                "name": name,
                "state": "READY" if any(e.state == "READY" for e in rows) else "UNAVAILABLE",
                "versions": sorted({e.version or "" for e in rows} - {""}, key=_num),
                "live_versions": live,
                "default_version": default_version({}, live),
            }
            if info["state"] == "READY":
                with contextlib.suppress(errors.GatewayError):
                    info["streaming"] = (await self.contract(name)).decoupled
                info = await adapter.describe(info)
            out.append(info)
        return out

    # --- inference -----------------------------------------------------------------------

    def parse(self, model: str, raw: bytes | dict[str, Any]) -> BaseModel:
        """Validate a predict body of ``model`` (JSON bytes or a parsed dict)."""
        return self.adapter(model).parse(raw)

    async def predict(
        self,
        model: str,
        body: BaseModel,
        version: str | None,
        timeout_s: float,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Run one prediction; ``request_id`` is sent to Triton as the inference request's id."""
        return await self.adapter(model).predict(body, version, timeout_s, request_id)


def _num(version: str) -> tuple[int, str]:
    return (len(version), version)
