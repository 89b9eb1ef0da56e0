"""The semantic cache's rules over a stand-in embedder and model (the real ones: integration)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlapi_client.results import InferResponse, ModelContract, TensorSpec
from mlapi_gateway.cache import semantic
from mlapi_gateway.cache.exact import CacheScope
from mlapi_gateway.cache.prompt_guard import compatible
from mlapi_gateway.cache.semantic import SemanticCache, deterministic
from mlapi_gateway.schemas import TensorPredict
from mlapi_gateway.settings import GatewaySettings

CONTRACT = ModelContract(
    name="gen",
    versions=("1",),
    platform="python",
    max_batch_size=0,
    decoupled=True,
    inputs=(
        TensorSpec("text_input", "BYTES", (1,)),
        TensorSpec("max_tokens", "INT32", (1,), optional=True),
        TensorSpec("temperature", "FP32", (1,), optional=True),
        TensorSpec("seed", "INT64", (1,), optional=True),
    ),
    outputs=(TensorSpec("text_output", "BYTES", (1,)),),
)


def _unit(*values: float) -> np.ndarray:
    v = np.zeros(384, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


class Embedder:
    """text_embedder's part of the client: a vector per prompt, as the test sets them."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.calls = 0

    async def infer(self, model: str, inputs: dict[str, Any], **_: Any) -> InferResponse:
        self.calls += 1
        text = inputs["text"].reshape(-1)[0].decode()
        return InferResponse(model, "1", {"embedding": self.vectors[text][None, :]})


class Upstream:
    def __init__(self, embedder: Embedder) -> None:
        self.client = embedder

    @contextlib.contextmanager
    def translated(self, model: str, version: str | None = None) -> Iterator[None]:
        yield

    async def contract(self, model: str, version: str | None = None) -> ModelContract:
        return CONTRACT


class Model:
    """The generation adapter's part the cache uses: its scope and its uncached relay."""

    name = "gen"

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.relayed: list[str] = []

    async def cache_scope(self, version: str | None) -> CacheScope | str:
        return CacheScope("1", "g")

    async def relay(
        self, body: TensorPredict, version: str | None, timeout_s: float, request_id: str | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        prompt = str(np.asarray(body.inputs["text_input"]).reshape(-1)[0])
        self.relayed.append(prompt)
        for token in ("one ", "two"):
            yield {
                "model": "gen",
                "model_version": "1",
                "outputs": {"text_output": [token + prompt]},
            }


VECTORS = {
    "Explain tides simply.": _unit(1, 0.1),
    "Can you explain tides simply?": _unit(1, 0.12),  # cosine ~0.9998: a paraphrase
    "Explain tides in 3 steps.": _unit(1, 0.11),
    "Explain tides in 4 steps.": _unit(1, 0.11),  # the same vector, another number
    "Write a letter from Alice to Bob.": _unit(0, 1, 0.2),
    "Write a letter from Bob to Alice.": _unit(0, 1, 0.2),
    "Why are volcanoes hot?": _unit(0, 0, 1),
    "Why is the sea salty?": _unit(0, 0.6, 0.8),  # cosine 0.8: below the threshold
}


def _body(prompt: str, **inputs: Any) -> TensorPredict:
    return TensorPredict(inputs={"text_input": [prompt], "temperature": [0.0], **inputs})


def _setup(**settings: Any) -> tuple[SemanticCache, Model, Embedder]:
    embedder = Embedder(VECTORS)
    upstream = Upstream(embedder)
    cache = SemanticCache(GatewaySettings(**settings), upstream)  # type: ignore[arg-type]
    return cache, Model(upstream), embedder


async def _events(cache: SemanticCache, model: Model, body: TensorPredict) -> list[dict]:
    return [e async for e in cache.stream(model, body, None, 5.0, "r")]  # type: ignore[arg-type]


def test_only_temperature_zero_or_a_seed_is_deterministic() -> None:
    assert deterministic(_body("x"))
    assert deterministic(TensorPredict(inputs={"text_input": ["x"], "seed": [7]}))
    assert not deterministic(TensorPredict(inputs={"text_input": ["x"], "temperature": [0.7]}))
    assert not deterministic(TensorPredict(inputs={"text_input": ["x"]}))  # the model's default


def test_a_paraphrase_is_answered_with_the_cached_generation() -> None:
    async def check() -> None:
        cache, model, _ = _setup()
        first = await _events(cache, model, _body("Explain tides simply."))
        assert [e["cache"] for e in first] == [{"hit": False, "kind": "semantic"}] * 2
        second = await _events(cache, model, _body("Can you explain tides simply?"))
        assert model.relayed == ["Explain tides simply."]
        assert [e["outputs"] for e in second] == [e["outputs"] for e in first]
        hit = second[0]["cache"]
        assert hit["hit"] is True and hit["kind"] == "semantic"
        assert cache.threshold <= hit["similarity"] <= 1.0
        assert "Explain" not in str(hit)  # another caller's prompt is named by hash only

    asyncio.run(check())


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("Explain tides in 3 steps.", "Explain tides in 4 steps."),  # changed number
        ("Write a letter from Alice to Bob.", "Write a letter from Bob to Alice."),  # swap
        ("Why are volcanoes hot?", "Why is the sea salty?"),  # below the threshold
    ],
)
def test_a_close_vector_that_means_something_else_is_a_miss(cached: str, asked: str) -> None:
    async def check() -> None:
        cache, model, _ = _setup()
        await _events(cache, model, _body(cached))
        answer = await _events(cache, model, _body(asked))
        assert answer[0]["cache"]["hit"] is False
        assert model.relayed == [cached, asked]

    asyncio.run(check())


def test_other_sampling_inputs_and_nondeterministic_requests_never_hit() -> None:
    async def check() -> None:
        cache, model, embedder = _setup()
        prompt = "Explain tides simply."
        await _events(cache, model, _body(prompt))
        await _events(cache, model, _body(prompt, max_tokens=[8]))
        await _events(cache, model, _body(prompt, seed=[3]))
        warm = TensorPredict(inputs={"text_input": [prompt], "temperature": [0.9]})
        for _ in range(2):
            answer = await _events(cache, model, warm)
            assert answer[0]["cache"] == {"hit": False, "bypass": "not deterministic"}
        assert len(model.relayed) == 5
        assert embedder.calls == 3  # a bypassed request is not even embedded
        assert (await _events(cache, model, _body(prompt, max_tokens=[8])))[0]["cache"]["hit"]

    asyncio.run(check())


def test_memory_is_bounded_by_entries_and_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(semantic.time, "monotonic", lambda: now[0])

    async def check() -> None:
        cache, model, _ = _setup(semantic_cache_max_entries=2, semantic_cache_ttl_s=60)
        for prompt in ("Explain tides simply.", "Why are volcanoes hot?", "Why is the sea salty?"):
            await _events(cache, model, _body(prompt))
        assert cache.entries() == 2  # the first went
        assert not (await _events(cache, model, _body("Can you explain tides simply?")))[0][
            "cache"
        ]["hit"]
        now[0] += 61
        assert not (await _events(cache, model, _body("Why is the sea salty?")))[0]["cache"]["hit"]

    asyncio.run(check())


def test_a_generation_the_client_left_is_not_kept() -> None:
    async def check() -> None:
        cache, model, _ = _setup()
        stream = cache.stream(model, _body("Explain tides simply."), None, 5.0, "r")  # type: ignore[arg-type]
        await anext(stream)
        await stream.aclose()
        assert cache.entries() == 0

    asyncio.run(check())


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Write a short story about a fox.", "Please write a short story about a fox.", True),
        ("A short story about a fox, please.", "Tell me a short story about a fox.", True),
        ("What is 17 plus 25?", "What is 17 plus 26?", False),
        ("Is coffee good for you?", "Is coffee not good for you?", False),
        ("Is coffee safe?", "Is coffee unsafe?", False),
        ("Write an argument for homework.", "Write an argument against homework.", False),
        ("Plan a trip from Peru to Chile.", "Plan a trip from Chile to Peru.", False),
        ("Why don't cats swim?", "Why do cats swim?", False),
    ],
)
def test_the_guard(a: str, b: str, same: bool) -> None:
    assert compatible(a, b) is same
    assert compatible(b, a) is same


def test_the_default_threshold_is_the_chosen_one() -> None:
    import json

    chosen = Path(__file__).resolve().parents[3] / "tools/mlapi_tools/semantic_pairs/threshold.json"
    assert GatewaySettings().semantic_cache_threshold == json.loads(chosen.read_text())["setting"]


def test_a_repeated_prompt_is_answered_without_embedding_it() -> None:
    async def check() -> None:
        cache, model, embedder = _setup()
        await _events(cache, model, _body("Why are volcanoes hot?"))
        calls = embedder.calls
        again = await _events(cache, model, _body("Why are volcanoes hot?"))
        assert again[0]["cache"]["hit"] is True and again[0]["cache"]["similarity"] == 1.0
        assert embedder.calls == calls and model.relayed == ["Why are volcanoes hot?"]

    asyncio.run(check())
