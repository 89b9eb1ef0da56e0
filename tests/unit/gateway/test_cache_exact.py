"""The exact cache's key, bounds and routing rules, and its hook in the adapters (fake Triton)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mlapi_gateway.cache import stores
from mlapi_gateway.cache.exact import (
    CacheScope,
    canonical_body,
    canonical_tensors,
    scope_of_policy,
    scope_of_versions,
)
from mlapi_gateway.cache.stores import MemoryStore

from .fake_triton import DIGITS_PARAMETERS, FakeTriton, config_of
from .inprocess import Gateway, run

PIXELS = {"pixels": [[0] * 8] * 8}
DIGITS = "/v1/models/digits/predict"


def test_the_key_of_tensors_names_shape_dtype_parameters_and_outputs() -> None:
    x = np.arange(6, dtype=np.float32)
    base = canonical_tensors({"x": x.reshape(2, 3)}, None)
    assert base == canonical_tensors({"x": x.reshape(2, 3).copy()}, None)
    others = [
        canonical_tensors({"x": x.reshape(3, 2)}, None),  # same bytes, other shape
        canonical_tensors({"x": x.reshape(2, 3).astype(np.int32)}, None),
        canonical_tensors({"x": x.view(np.int32).reshape(2, 3)}, None),  # same bytes, other dtype
        canonical_tensors({"y": x.reshape(2, 3)}, None),
        canonical_tensors({"x": x.reshape(2, 3)}, {"tag": "a"}),
        canonical_tensors({"x": x.reshape(2, 3)}, None, ["y"]),
    ]
    assert len({base, *others}) == 1 + len(others)


def test_the_key_of_strings_keeps_their_boundaries() -> None:
    one = canonical_tensors({"t": np.array([b"ab", b"c"], dtype=object)}, None)
    two = canonical_tensors({"t": np.array([b"a", b"bc"], dtype=object)}, None)
    assert one != two


def test_a_typed_body_is_canonical_whatever_its_key_order() -> None:
    assert canonical_body({"a": 1, "b": b"\x00"}) == canonical_body({"b": b"\x00", "a": 1})
    assert canonical_body({"top_k": 2, **PIXELS}) != canonical_body(PIXELS)


def test_a_canary_split_is_not_cached_for_unpinned_requests() -> None:
    live = ["1", "2"]
    assert scope_of_policy({"1": 90, "2": 10}, None, live, None) == "traffic split"
    pinned = scope_of_policy({"1": 90, "2": 10}, None, live, "2")
    assert isinstance(pinned, CacheScope) and pinned.version == "2" and pinned.pinned
    single = scope_of_policy({"2": 100}, None, live, None)
    assert isinstance(single, CacheScope) and single.version == "2" and not single.pinned
    assert scope_of_policy({"2": 100}, None, live, "3") == "version not live"
    assert scope_of_policy({"3": 100}, None, live, None) == "version not live"


def test_the_generation_follows_the_policy_and_the_live_versions() -> None:
    def generation(weights: dict[str, float], shadow: str | None, live: list[str]) -> str:
        scope = scope_of_policy(weights, shadow, live, "1")
        assert isinstance(scope, CacheScope)
        return scope.generation

    first = generation({"1": 100}, None, ["1", "2"])
    assert first == generation({"1": 100}, None, ["2", "1"])
    assert first != generation({"1": 100}, "2", ["1", "2"])
    assert first != generation({"1": 100}, None, ["1"])
    assert first != generation({"1": 100.0, "2": 0}, None, ["1", "2"])


def test_an_unpinned_request_resolves_to_the_newest_live_version() -> None:
    scope = scope_of_versions(["2", "10", "9"], None)
    assert isinstance(scope, CacheScope) and scope.version == "10"
    assert scope_of_versions([], None) == "no live version"
    assert scope_of_versions(["1"], "2") == "version not live"


def test_the_memory_store_bounds_entries_bytes_and_age(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(stores.time, "monotonic", lambda: now[0])

    async def check() -> None:
        store = MemoryStore(max_entries=2, max_bytes=10, ttl_s=5)
        await store.put("a", b"1234")
        await store.put("b", b"1234")
        assert await store.get("a") is not None  # a is now the most recent
        await store.put("c", b"12")
        assert await store.get("b") is None  # over 2 entries: the least recent went
        await store.put("d", b"12345678")  # over 10 bytes: evicts until it fits
        assert await store.get("a") is None
        assert store.size() == (2, 10)
        await store.put("huge", b"x" * 11)  # over the bound alone: never kept
        assert await store.get("huge") is None
        now[0] += 4.9
        assert await store.get("d") == (b"12345678", pytest.approx(4.9))
        now[0] += 0.2
        assert await store.get("d") is None
        assert store.size() == (1, 2)

    asyncio.run(check())


def _digits_calls(triton: FakeTriton) -> int:
    return len(triton.called("digits"))


def test_a_repeated_request_is_answered_from_the_cache(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        first = await gw.http.post(DIGITS, json=PIXELS, headers=gw.auth)
        second = await gw.http.post(DIGITS, json=PIXELS, headers=gw.auth)
        assert first.status_code == second.status_code == 200
        assert first.json()["cache"] == {"hit": False}
        body, expected = second.json(), first.json()
        cache = body.pop("cache")
        assert cache["hit"] is True and cache["kind"] == "exact" and cache["age_s"] >= 0
        del expected["cache"]
        assert body == expected
        assert _digits_calls(gw.triton) == 1
        # Other parameters, another version: other keys.
        await gw.http.post(DIGITS, json={**PIXELS, "top_k": 2}, headers=gw.auth)
        await gw.http.post("/v1/models/digits/versions/2/predict", json=PIXELS, headers=gw.auth)
        await gw.http.post("/v1/models/digits/versions/1/predict", json=PIXELS, headers=gw.auth)
        assert _digits_calls(gw.triton) == 4

    run(tmp_path, check, exact_cache_models=["digits"])


def test_a_refused_request_is_never_answered_from_the_cache(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        ok = {"pixels": [[0] * 8] * 8, "top_k": 3}
        assert (await gw.http.post(DIGITS, json=ok, headers=gw.auth)).status_code == 200
        gw.triton.configs["digits"] = config_of("digits", {**DIGITS_PARAMETERS, "max_top_k": "2"})
        refused = await gw.http.post(DIGITS, json=ok, headers=gw.auth)
        assert refused.status_code == 400, refused.text

    run(tmp_path, check, exact_cache_models=["digits"], metadata_cache_s=0)


def test_under_a_split_unpinned_requests_bypass_and_a_policy_change_invalidates(
    tmp_path: Path,
) -> None:
    pinned = "/v1/models/digits/versions/2/predict"

    async def check(gw: Gateway) -> None:
        for path in (DIGITS, DIGITS, pinned, pinned):
            await gw.http.post(path, json=PIXELS, headers=gw.auth)
        assert _digits_calls(gw.triton) == 2
        split = {**DIGITS_PARAMETERS, "traffic_policy": '{"weights": {"1": 50, "2": 50}}'}
        gw.triton.configs["digits"] = config_of("digits", split)
        for _ in range(2):
            answer = await gw.http.post(DIGITS, json=PIXELS, headers=gw.auth)
            assert answer.json()["cache"] == {"hit": False, "bypass": "traffic split"}
        assert _digits_calls(gw.triton) == 4
        # A pinned request is cached under a split too, but not from the old policy's entries.
        for _ in range(2):
            await gw.http.post(pinned, json=PIXELS, headers=gw.auth)
        assert _digits_calls(gw.triton) == 5
        gw.triton.versions["digits_classifier"] = ["2"]
        await gw.http.post(pinned, json=PIXELS, headers=gw.auth)
        assert _digits_calls(gw.triton) == 6  # the live versions changed: a new generation

    run(tmp_path, check, exact_cache_models=["digits"], metadata_cache_s=0)


def test_tensor_requests_key_on_their_parameters(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        body = {"inputs": {"x": [[1, 2]]}}
        for extra in ({}, {}, {"parameters": {"tag": "a"}}, {"parameters": {"tag": "a"}}):
            reply = await gw.http.post(
                "/v1/models/echo/predict", json={**body, **extra}, headers=gw.auth
            )
            assert reply.status_code == 200 and reply.json()["outputs"] == {"y": [[2.0, 4.0]]}
        assert len(gw.triton.called("infer")) == 2

    run(tmp_path, check, exact_cache_models=["echo"])


def test_concurrent_requests_get_their_own_answers(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        bodies = [{"inputs": {"x": [[i, i + 1]]}} for i in range(20)]

        async def one(body: dict) -> None:
            reply = await gw.http.post("/v1/models/echo/predict", json=body, headers=gw.auth)
            x = np.asarray(body["inputs"]["x"], dtype=np.float32)
            assert reply.json()["outputs"]["y"] == (x * 2).tolist()

        await asyncio.gather(*(one(b) for b in bodies * 3))
        assert len(gw.triton.called("infer")) < 60

    run(tmp_path, check, exact_cache_models=["echo"])


def test_the_cache_is_off_by_default(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        for _ in range(2):
            reply = await gw.http.post(DIGITS, json=PIXELS, headers=gw.auth)
            assert "cache" not in reply.json()
        assert _digits_calls(gw.triton) == 2

    run(tmp_path, check)


def test_the_answer_schema_documents_the_cache_field_of_covered_models(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        schemas = (await gw.http.get("/openapi.json")).json()["components"]["schemas"]
        assert schemas["DigitsAnswer"]["properties"]["cache"]["required"] == ["hit"]

    run(tmp_path, check, exact_cache_models=["digits"])


def test_the_answer_header_names_the_cache_field_and_is_never_doubled() -> None:
    from starlette.types import Message, Receive, Scope, Send

    from mlapi_gateway.cache import status

    assert status.outcome_of({"hit": True, "kind": "exact", "age_s": 1.0}) == "hit"
    assert status.outcome_of({"hit": False}) == "miss"
    assert status.outcome_of({"hit": False, "bypass": "canary split"}) == "bypass"
    assert status.outcome_of(None) is None and status.outcome_of("hit") is None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        status.report("hit")
        own = [(b"x-cache", b"miss")] if scope["path"] == "/own" else []
        await send({"type": "http.response.start", "status": 200, "headers": own})
        await send({"type": "http.response.body", "body": b""})

    async def headers_of(path: str) -> list[tuple[bytes, bytes]]:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        await status.CacheHeaderMiddleware(app)({"type": "http", "path": path}, receive, send)
        return list(sent[0]["headers"])

    assert asyncio.run(headers_of("/reported")) == [(b"x-cache", b"hit")]
    assert asyncio.run(headers_of("/own")) == [(b"x-cache", b"miss")]
