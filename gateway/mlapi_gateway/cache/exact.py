"""The gateway's exact cache: answers of deterministic models keyed on the canonical request.

The key (docs/caching.md) hashes the model, the version the request resolves to, a generation
naming what routes the request (the traffic policy and the live versions: when either changes,
every key changes, so no answer of the old routing is served again), and the canonical request:
every input tensor with its name, dtype, shape and bytes, every parameter, and the outputs
asked for. Typed adapters canonicalise their bodies, which determine their tensors.

An unpinned request is cached only while the policy sends all unpinned traffic to one version:
under a canary split a cached answer would pin every later caller to the version that answered
first, which the policy would not do.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from mlapi_gateway.cache import metrics, status
from mlapi_gateway.cache.stores import AnswerStore, MemoryStore, RedisStore
from mlapi_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
# Part of every key: a gateway whose canonical form changes must not read older entries.
KEY_FORMAT = b"mlapi-exact-cache/1"


@dataclass(frozen=True)
class CacheScope:
    """Where a request goes: its version, the routing generation, whether it was pinned.

    Pinned and resolved requests differ in their answers (the routing reason), so in keys too.
    """

    version: str
    generation: str
    pinned: bool = False


def generation_of(*parts: Any) -> str:
    """Return a short, stable name of routing facts (policy weights, shadow, live versions)."""
    raw = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(raw).hexdigest()[:16]


def scope_of_policy(
    weights: Mapping[str, float], shadow: str | None, live: Sequence[str], version: str | None
) -> CacheScope | str:
    """Resolve a request's version under a traffic policy, or say why it is not cacheable.

    Pinned: the pinned version, while it is live. Unpinned: the one version every unpinned
    request goes to; under a split (a canary) unpinned requests are not cached at all.
    """
    generation = generation_of(dict(weights), shadow, sorted(live))
    if version is not None:
        if version not in live:
            return "version not live"
        return CacheScope(version, generation, pinned=True)
    serving = [v for v, share in weights.items() if share > 0]
    if len(serving) != 1:
        return "traffic split" if serving else "no policy"
    if serving[0] not in live:
        return "version not live"
    return CacheScope(serving[0], generation)


def scope_of_versions(live: Sequence[str], version: str | None) -> CacheScope | str:
    """Resolve a request's version on a model without a policy: pinned, else the newest live."""
    if not live:
        return "no live version"
    generation = generation_of(sorted(live))
    if version is not None:
        return CacheScope(version, generation, True) if version in live else "version not live"
    return CacheScope(max(live, key=lambda v: (len(v), v)), generation)


def canonical_tensors(
    tensors: Mapping[str, npt.NDArray[Any]],
    parameters: Mapping[str, Any] | None,
    outputs: Sequence[str] | None = None,
) -> bytes:
    """Return the canonical bytes of a tensor request: names, dtypes, shapes, bytes, the rest."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = tensors[name]
        head = {"name": name, "dtype": array.dtype.str, "shape": list(array.shape)}
        digest.update(orjson.dumps(head))
        if array.dtype == np.object_:
            for element in array.reshape(-1):
                value = element if isinstance(element, bytes) else str(element).encode()
                digest.update(len(value).to_bytes(8, "little"))
                digest.update(value)
        else:
            digest.update(np.ascontiguousarray(array).tobytes())
    tail = {"parameters": dict(parameters or {}), "outputs": sorted(outputs) if outputs else "*"}
    digest.update(orjson.dumps(tail, option=orjson.OPT_SORT_KEYS))
    return digest.digest()


def canonical_body(body: Mapping[str, Any]) -> bytes:
    """Return the canonical bytes of a typed body (keys sorted, bytes as base64)."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=_bytes_as_text)


def _bytes_as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot canonicalise {type(value).__name__}")


class ExactCache:
    """Answers by key, in memory or in Redis (``exact_cache_store``), within the bounds."""

    def __init__(self, settings: GatewaySettings, store: AnswerStore | None = None) -> None:
        self.models = frozenset(settings.exact_cache_models)
        self.store: AnswerStore
        if store is not None:
            self.store = store
        elif settings.exact_cache_store == "redis" or (
            settings.exact_cache_store == "auto" and settings.redis_url
        ):
            assert settings.redis_url is not None
            self.store = RedisStore(
                settings.redis_url, settings.exact_cache_ttl_s, settings.exact_cache_max_entry_bytes
            )
        else:
            self.store = MemoryStore(
                settings.exact_cache_max_entries,
                settings.exact_cache_max_bytes,
                settings.exact_cache_ttl_s,
            )
        self._generations: dict[str, str] = {}

    def covers(self, model: str) -> bool:
        """Whether answers of ``model`` are cached (its answers are a function of the request)."""
        return model in self.models

    def key(self, model: str, scope: CacheScope, canonical: bytes) -> str:
        """Return the store key of a request; its prefix names the model and the generation."""
        digest = hashlib.sha256(KEY_FORMAT)
        route = b"pinned" if scope.pinned else b"resolved"
        for part in (model.encode(), scope.version.encode(), scope.generation.encode(), route):
            digest.update(len(part).to_bytes(4, "little") + part)
        digest.update(canonical)
        return f"{model}:{scope.generation}:{digest.hexdigest()}"

    async def get(self, model: str, scope: CacheScope, key: str) -> dict[str, Any] | None:
        """Return the cached answer of ``key`` (marked as a hit), or None (counted as a miss)."""
        await self._follow(model, scope.generation)
        found = await self.store.get(key)
        if found is None:
            metrics.EXACT_REQUESTS.labels(model, "miss").inc()
            status.report("miss")
            return None
        value, age_s = found
        metrics.EXACT_REQUESTS.labels(model, "hit").inc()
        status.report("hit")
        answer: dict[str, Any] = orjson.loads(value)
        answer["cache"] = {"hit": True, "kind": "exact", "age_s": round(age_s, 3)}
        return answer

    async def put(self, key: str, answer: Mapping[str, Any]) -> None:
        """Keep ``answer`` under ``key`` (without the cache field of this response)."""
        stored = {k: v for k, v in answer.items() if k != "cache"}
        await self.store.put(key, orjson.dumps(stored))
        self._sizes()

    def bypass(self, model: str, reason: str) -> dict[str, Any]:
        """Count a request the cache does not answer nor keep; return its cache field."""
        metrics.EXACT_REQUESTS.labels(model, "bypass").inc()
        status.report("bypass")
        return {"hit": False, "bypass": reason}

    async def close(self) -> None:
        """Release the store."""
        await self.store.close()

    async def _follow(self, model: str, generation: str) -> None:
        """Drop the entries of a model's previous generation once a new one is seen."""
        previous = self._generations.get(model)
        if previous == generation:
            return
        self._generations[model] = generation
        if previous is not None:
            log.info("exact cache: routing of '%s' changed; dropping its entries", model)
            await self.store.clear(f"{model}:{previous}:")
            self._sizes()

    def _sizes(self) -> None:
        entries, size = self.store.size()
        metrics.EXACT_ENTRIES.set(entries)
        metrics.EXACT_BYTES.set(size)
