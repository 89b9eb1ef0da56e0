"""The semantic cache of a generation model: a close enough prompt gets a cached generation.

A deterministic request whose prompt means the same as a cached one gets that generation again.

Deterministic: temperature 0, or a fixed seed. Everything of the request but the prompt (every
other input, every parameter, the resolved version) must be equal: that is the group a lookup
searches. Prompts are embedded with the text embedding model (unit vectors, so cosine is a dot
product); a hit needs a cached prompt of the group at ``threshold`` or above, a value chosen on
the project's labelled prompt pairs (``python -m mlapi_tools.semantic_pairs``, docs/caching.md),
that also passes the lexical guard (same numbers, negations and order of shared words:
mlapi_gateway.cache.prompt_guard); the closest such prompt answers. Memory is bounded by ``max_entries`` generations (least recently used go
first) of at most ``max_events`` events each, each kept ``ttl_s``; a worker holds its own.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mlapi_gateway import errors, tensors
from mlapi_gateway.cache import metrics, status
from mlapi_gateway.cache.exact import CacheScope, canonical_tensors
from mlapi_gateway.cache.prompt_guard import compatible
from mlapi_gateway.schemas import TensorPredict
from mlapi_gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from mlapi_gateway.adapters.base import ModelAdapter
    from mlapi_gateway.upstream import Upstream

log = logging.getLogger(__name__)
PROMPT = "text_input"
TEMPERATURE = "temperature"
SEED = "seed"
Vector = npt.NDArray[np.float32]


def prompt_of(body: TensorPredict) -> str | None:
    """Return the request's one prompt, or None when it has not exactly one string."""
    values = np.asarray(body.inputs.get(PROMPT), dtype=object).reshape(-1)
    if values.size != 1 or not isinstance(values[0], str):
        return None
    return str(values[0])


def deterministic(body: TensorPredict) -> bool:
    """Whether the request's output is a function of it: temperature 0 or a fixed seed."""
    if SEED in body.inputs:
        return True
    temperature = np.asarray(body.inputs.get(TEMPERATURE, [None]), dtype=object).reshape(-1)
    return temperature.size == 1 and isinstance(temperature[0], int | float) and temperature[0] == 0


@dataclass
class Entry:
    """One cached generation: its prompt's vector, its events, when it was made."""

    vector: Vector
    events: list[dict[str, Any]]
    created: float
    name: str  # a short hash of the cached prompt: answers name it, never its text
    prompt: str  # another caller's text: kept for the guard only


@dataclass
class Group:
    """The cached generations of one set of equal sampling parameters."""

    entries: dict[str, Entry] = field(default_factory=dict)
    matrix: Vector | None = None  # rows: vectors of entries, in insertion order
    names: list[str] = field(default_factory=list)

    def rebuild(self) -> None:
        self.names = list(self.entries)
        self.matrix = np.stack([self.entries[n].vector for n in self.names]) if self.names else None

    def nearest(self) -> tuple[Vector | None, list[str]]:
        return self.matrix, self.names


class SemanticCache:
    """Generations by prompt meaning, for the models in ``semantic_cache_models``."""

    # Cached prompts above the threshold the guard is asked about, closest first.
    GUARD_CANDIDATES = 8

    def __init__(self, settings: GatewaySettings, upstream: Upstream) -> None:
        self.threshold = settings.semantic_cache_threshold
        self.max_entries = settings.semantic_cache_max_entries
        self.max_events = settings.semantic_cache_max_events
        self.ttl_s = settings.semantic_cache_ttl_s
        self.embedder = settings.semantic_cache_embedder
        self.upstream = upstream
        self._groups: dict[bytes, Group] = {}
        self._order: OrderedDict[tuple[bytes, str], None] = OrderedDict()  # LRU of entries

    async def embed(self, prompt: str, timeout_s: float) -> Vector:
        """Return the prompt's unit embedding from the embedding model."""
        texts = np.array([[prompt.encode()]], dtype=np.object_)
        with self.upstream.translated(self.embedder):
            response = await self.upstream.client.infer(
                self.embedder, {"text": texts}, timeout_s=timeout_s, retry=False
            )
        return np.asarray(response.outputs["embedding"][0], dtype=np.float32)

    def lookup(
        self, group_key: bytes, prompt: str, vector: Vector
    ) -> tuple[Entry | None, float | None]:
        """Return the closest entry at the threshold that the guard admits, and its similarity.

        Without such an entry: None and the nearest entry's similarity (None: group empty).
        """
        group = self._groups.get(group_key)
        if group is None:
            return None, None
        self._expire(group_key, group)
        matrix, names = group.nearest()
        if matrix is None:
            return None, None
        similarities = matrix @ vector
        ranked = np.argsort(-similarities)
        nearest = float(similarities[ranked[0]])
        for index in ranked[: self.GUARD_CANDIDATES]:
            similarity = float(similarities[index])
            if similarity < self.threshold:
                break
            entry = group.entries[names[index]]
            if compatible(prompt, entry.prompt):
                self._order.move_to_end((group_key, entry.name))
                return entry, similarity
        return None, nearest

    async def _find(
        self, group_key: bytes, prompt: str, timeout_s: float
    ) -> tuple[Entry | None, float | None, Vector | None]:
        """Return the entry answering ``prompt`` (or None), its similarity, the prompt's vector.

        A repeat of a cached prompt is found without an embedding (no vector then).
        """
        entry = self.same_prompt(group_key, prompt)
        if entry is not None:
            return entry, 1.0, None
        vector = await self.embed(prompt, timeout_s)
        entry, similarity = self.lookup(group_key, prompt, vector)
        return entry, similarity, vector

    def same_prompt(self, group_key: bytes, prompt: str) -> Entry | None:
        """Return the live entry of exactly ``prompt`` in the group, if any."""
        group = self._groups.get(group_key)
        if group is None:
            return None
        self._expire(group_key, group)
        entry = group.entries.get(hashlib.sha256(prompt.encode()).hexdigest()[:12])
        if entry is None or entry.prompt != prompt:
            return None
        self._order.move_to_end((group_key, entry.name))
        return entry

    def keep(
        self, group_key: bytes, prompt: str, vector: Vector, events: list[dict[str, Any]]
    ) -> None:
        """Cache a finished generation of ``prompt`` in its group, evicting the oldest beyond bounds."""
        if not events or len(events) > self.max_events:
            return
        name = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        group = self._groups.setdefault(group_key, Group())
        group.entries[name] = Entry(vector, events, time.monotonic(), name, prompt)
        self._order[(group_key, name)] = None
        self._order.move_to_end((group_key, name))
        while len(self._order) > self.max_entries:
            (old_group, old_name), _ = self._order.popitem(last=False)
            self._remove(old_group, old_name)
        group.rebuild()
        metrics.SEMANTIC_ENTRIES.set(len(self._order))

    def entries(self) -> int:
        """Return how many generations are cached."""
        return len(self._order)

    async def stream(
        self,
        adapter: ModelAdapter,
        body: TensorPredict,
        version: str | None,
        timeout_s: float,
        request_id: str | None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Relay ``adapter``'s stream, answered from the cache when a close prompt is in it."""
        prompt = prompt_of(body)
        reason = None if prompt is not None else "not one prompt"
        if reason is None and not deterministic(body):
            reason = "not deterministic"
        scope: CacheScope | str = reason or await adapter.cache_scope(version)
        if isinstance(scope, str) or prompt is None:
            why = scope if isinstance(scope, str) else "not one prompt"
            async for item in self._bypassed(adapter, body, version, timeout_s, request_id, why):
                yield item
            return
        group_key = await self._group_key(adapter, scope, body, version)
        try:
            entry, similarity, vector = await self._find(group_key, prompt, timeout_s)
        except errors.GatewayError as exc:  # the generation must not fail for the embedder
            log.warning("semantic cache: embedding failed (%s); generating", exc)
            async for item in self._bypassed(
                adapter, body, version, timeout_s, request_id, "embedding failed"
            ):
                yield item
            return
        if similarity is not None:
            metrics.SEMANTIC_SIMILARITY.labels(adapter.name).observe(similarity)
        if entry is not None and similarity is not None:
            metrics.SEMANTIC_REQUESTS.labels(adapter.name, "hit").inc()
            status.report("semantic-hit")
            cache = {
                "hit": True,
                "kind": "semantic",
                "similarity": round(similarity, 6),
                "entry": entry.name,
                "age_s": round(time.monotonic() - entry.created, 3),
            }
            for event in entry.events:
                yield {**event, "cache": cache}
            return
        metrics.SEMANTIC_REQUESTS.labels(adapter.name, "miss").inc()
        status.report("miss")
        events: list[dict[str, Any]] = []
        miss = {"hit": False, "kind": "semantic"}
        async for item in adapter.relay(body, version, timeout_s, request_id):
            if len(events) <= self.max_events:
                events.append(item)
            yield {**item, "cache": miss}
        # Only a generation that ran to its end is kept (a client that left stops it early),
        # and only when the version the group names served it.
        if events and vector is not None and str(events[-1].get("model_version")) == scope.version:
            self.keep(group_key, prompt, vector, events)

    async def _bypassed(
        self,
        adapter: ModelAdapter,
        body: TensorPredict,
        version: str | None,
        timeout_s: float,
        request_id: str | None,
        reason: str,
    ) -> AsyncGenerator[dict[str, Any], None]:
        metrics.SEMANTIC_REQUESTS.labels(adapter.name, "bypass").inc()
        status.report("bypass")
        cache = {"hit": False, "bypass": reason}
        async for item in adapter.relay(body, version, timeout_s, request_id):
            yield {**item, "cache": cache}

    async def _group_key(
        self, adapter: ModelAdapter, scope: CacheScope, body: TensorPredict, version: str | None
    ) -> bytes:
        """Hash everything of the request but the prompt, as the model's typed tensors."""
        contract = await adapter.upstream.contract(adapter.name, version)
        inputs = tensors.tensors_for(contract, body.inputs)  # a bad input is its 400 here
        others = {k: v for k, v in inputs.items() if k != PROMPT}
        canonical = canonical_tensors(others, body.parameters)
        route = f"{adapter.name}|{scope.version}|{scope.generation}|{scope.pinned}".encode()
        return hashlib.sha256(route + canonical).digest()

    def _expire(self, group_key: bytes, group: Group) -> None:
        now = time.monotonic()
        stale = [n for n, e in group.entries.items() if now - e.created >= self.ttl_s]
        for name in stale:
            self._order.pop((group_key, name), None)
            self._remove(group_key, name)
        if stale:
            metrics.SEMANTIC_ENTRIES.set(len(self._order))

    def _remove(self, group_key: bytes, name: str) -> None:
        group = self._groups.get(group_key)
        if group is None:
            return
        group.entries.pop(name, None)
        if group.entries:
            group.rebuild()
        else:
            del self._groups[group_key]
