"""The interface of a public model's adapter: what the gateway core asks of each model.

The core (routes, jobs, streaming, discovery) knows models only through this interface; what
one model accepts, how its body becomes a call and how its answer reads lives in its adapter.
Every prediction goes through ``predict``, where the exact cache answers or keeps it, and every
stream through ``stream``, where the semantic cache does (docs/caching.md).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Hashable
from typing import Any, ClassVar

from pydantic import BaseModel

from mlapi_gateway import errors, tensors
from mlapi_gateway.cache.exact import CacheScope, ExactCache, canonical_body, scope_of_versions
from mlapi_gateway.cache.semantic import SemanticCache
from mlapi_gateway.schemas import TensorAnswer, TensorPredict, parse_as
from mlapi_gateway.upstream import Cached, Upstream

Body = bytes | dict[str, Any]


class ModelAdapter(ABC):
    """One public model: its body schema, the call a body makes, the answer it returns.

    The defaults fit any model called with named tensors; an adapter overrides what its model
    types more precisely. ``typed``: /openapi.json gives the model predict paths of its own
    with ``body_schema`` and ``answer_schema`` (the generic paths document tensors).
    """

    body_schema: ClassVar[type[BaseModel]] = TensorPredict
    answer_schema: ClassVar[type[BaseModel]] = TensorAnswer
    typed: ClassVar[bool] = False

    def __init__(self, name: str, upstream: Upstream) -> None:
        self.name = name
        self.upstream = upstream
        # Set by the core for the models its caches cover (settings: exact_cache_models,
        # semantic_cache_models).
        self.exact_cache: ExactCache | None = None
        self.semantic_cache: SemanticCache | None = None
        self._live_versions = Cached(upstream.settings.metadata_cache_s)

    def parse(self, raw: Body) -> BaseModel:
        """Validate a predict body (JSON bytes or a parsed dict), or raise RequestInvalidError."""
        return parse_as(self.body_schema, raw)

    @abstractmethod
    async def check(self, body: BaseModel, version: str | None) -> None:
        """Refuse now (RequestInvalidError) what the model would refuse, e.g. for a job's inputs."""

    @abstractmethod
    async def infer(
        self, body: BaseModel, version: str | None, timeout_s: float, request_id: str | None
    ) -> dict[str, Any]:
        """Run one prediction on the model; ``request_id`` is the inference request's id."""

    async def predict(
        self, body: BaseModel, version: str | None, timeout_s: float, request_id: str | None
    ) -> dict[str, Any]:
        """Run one prediction, answered from the exact cache when it holds the same request.

        The request is checked first (a hit never answers what the model would now refuse);
        an answer is kept only when the version that served it is the one the key names.
        """
        cache = self.exact_cache
        if cache is None:
            return await self.infer(body, version, timeout_s, request_id)
        started = time.monotonic()
        scope: CacheScope | str
        try:  # the request's deadline bounds the cache's reads too
            async with asyncio.timeout(timeout_s):
                await self.check(body, version)
                scope = await self.cache_scope(version)
        except TimeoutError:
            scope = "routing unknown"
        timeout_s = max(0.001, timeout_s - (time.monotonic() - started))
        if isinstance(scope, str):
            answer = await self.infer(body, version, timeout_s, request_id)
            answer["cache"] = cache.bypass(self.name, scope)
            return answer
        key = cache.key(self.name, scope, await self.cache_request(body, version))
        hit = await cache.get(self.name, scope, key)
        if hit is not None:
            return hit
        answer = await self.infer(body, version, timeout_s, request_id)
        if str(answer.get("model_version")) == scope.version:
            await cache.put(key, answer)
        answer["cache"] = {"hit": False}
        return answer

    async def cache_scope(self, version: str | None) -> CacheScope | str:
        """Return the version a request resolves to, or why it is not cacheable.

        The default: the model's live versions (an unpinned request gets the newest).
        """

        async def load() -> list[str]:
            with self.upstream.translated(self.name, version):
                return await self.upstream.client.live_versions(self.name, retry=False)

        try:
            live = await self._live_versions.get(self.name, load)
        except errors.GatewayError:
            return "versions unknown"
        return scope_of_versions(live, version)

    async def cache_request(self, body: BaseModel, version: str | None) -> bytes:
        """Return the canonical bytes of a request (the typed body; the tensors for tensors)."""
        return canonical_body(body.model_dump())

    def stream(
        self, body: TensorPredict, version: str | None, timeout_s: float, request_id: str | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Relay a decoupled model's responses (errors already translated).

        With the semantic cache on for the model, a deterministic request whose prompt is
        close enough to a cached one is answered with that generation.
        """
        if self.semantic_cache is not None:
            return self.semantic_cache.stream(self, body, version, timeout_s, request_id)
        return self.relay(body, version, timeout_s, request_id)

    def relay(
        self, body: TensorPredict, version: str | None, timeout_s: float, request_id: str | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Relay the model's own responses, without any cache."""
        return tensors.stream(self.upstream, self.name, body, version, timeout_s, request_id)

    async def describe(self, info: dict[str, Any]) -> dict[str, Any]:
        """Complete the model list's entry ``info`` of a READY model (e.g. its live versions)."""
        return info

    async def discover(self) -> None:
        """Read what the adapter needs of the model's config (at start; requests re-read it)."""
        return None

    async def close(self) -> None:
        """Release what the adapter holds (threads, connections)."""
        return None

    def revision(self) -> Hashable:
        """Return what the documented schemas depend on beyond the code (None: nothing)."""
        return None

    def documented_schemas(self) -> dict[str, dict[str, Any]]:
        """Return the JSON schemas of the body and the answer, by component name."""
        schemas = {
            schema.__name__: schema.model_json_schema(ref_template="#/components/schemas/{model}")
            for schema in (self.body_schema, self.answer_schema)
        }
        if self.exact_cache is not None:
            answer = schemas[self.answer_schema.__name__]
            answer.setdefault("properties", {})["cache"] = CACHE_FIELD
        return schemas


# The answer's ``cache`` field (models the exact cache covers); X-Cache says the same.
CACHE_FIELD: dict[str, Any] = {
    "type": "object",
    "description": "whether the exact cache answered (docs/caching.md)",
    "required": ["hit"],
    "properties": {
        "hit": {"type": "boolean"},
        "kind": {"type": "string", "enum": ["exact"]},
        "age_s": {"type": "number", "description": "seconds since the answer was computed"},
        "bypass": {"type": "string", "description": "why the cache neither answered nor kept it"},
    },
}
