"""Coalescing concurrent calls into shared requests, against a fake ``send`` each test controls.

The real-server side (answers equal to separate calls', Triton counting fewer requests) is in
tests/integration/gateway/test_coalescing.py.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from mlapi_client.coalesce import MAX_JOINED_ID_CHARS, Coalescer, Coalescing
from mlapi_client.error_mapping import CallContext, HttpStatusError, translate
from mlapi_client.errors import InvalidInputError, ModelUnavailableError, ServerError
from mlapi_client.results import InferResponse


class FakeModel:
    """Answers each row with its image's sum; rows whose sum is 13 make the request fail."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.requests: list[tuple[int, str | None]] = []  # (rows, request id) per request
        self.gate = asyncio.Event()
        self.gate.set()
        self.failure = failure

    async def send(
        self, inputs: Mapping[str, npt.NDArray[Any]], timeout_s: float | None, rid: str | None
    ) -> InferResponse:
        image = inputs["image"]
        self.requests.append((image.shape[0], rid))
        await self.gate.wait()
        sums = image.reshape(image.shape[0], -1).sum(axis=1)
        if (sums == 13).any():
            raise self.failure or HttpStatusError(400, "row 13 is refused")
        return InferResponse(
            "digits", "1", {"sum": sums[:, None], "rows": np.full(len(sums), len(sums))}
        )


def image(value: int, rows: int = 1) -> dict[str, npt.NDArray[Any]]:
    """``rows`` images of 2x2 pixels whose sum is ``value``."""
    array = np.zeros((rows, 2, 2), dtype=np.uint8)
    array[:, 0, 0] = value
    return {"image": array}


def synchronous(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def policy(rows: int = 8, in_flight: int = 1) -> Coalescing:
    return Coalescing(frozenset({"digits"}), max_rows=rows, max_in_flight=in_flight)


def call(coalescer: Coalescer, model: FakeModel, value: int, rid: str | None = None,
         rows: int = 1, parameters: dict[str, Any] | None = None) -> Any:  # fmt: skip
    inputs = image(value, rows)
    kind = coalescer.kind_of("digits", inputs, "", None, parameters)
    assert kind is not None
    return coalescer.call(kind[0], kind[1], inputs, 5.0, rid, model.send)


async def burst(
    coalescer: Coalescer, model: FakeModel, values: list[int], ids: list[str] | None = None
) -> list[Any]:
    """One call of value 1 out, calls of ``values`` waiting behind it, then the model answers.

    Returns every call's answer or exception, the first call's first.
    """
    model.gate.clear()
    first = asyncio.create_task(call(coalescer, model, 1))
    await asyncio.sleep(0)
    names = ids or [None] * len(values)
    waiting = [
        asyncio.create_task(call(coalescer, model, v, n))
        for v, n in zip(values, names, strict=True)
    ]
    await asyncio.sleep(0)
    model.gate.set()
    return list(await asyncio.gather(first, *waiting, return_exceptions=True))


@synchronous
async def test_a_lone_call_is_sent_at_once_with_its_own_id() -> None:
    coalescer, model = Coalescer(policy()), FakeModel()
    answer = await call(coalescer, model, 7, "rid-1")
    assert model.requests == [(1, "rid-1")]
    assert answer["sum"].tolist() == [[7]] and coalescer.pending() == 0
    assert not coalescer._kinds  # nothing kept once idle


@synchronous
async def test_calls_that_wait_share_the_next_request_and_get_their_own_rows() -> None:
    coalescer, model = Coalescer(policy()), FakeModel()
    model.gate.clear()
    first = asyncio.create_task(call(coalescer, model, 1, "a"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(call(coalescer, model, v, f"r{v}")) for v in (2, 3, 4)]
    await asyncio.sleep(0)
    assert model.requests == [(1, "a")]  # the others wait: one request is out (max_in_flight 1)
    model.gate.set()
    answers = await asyncio.gather(first, *waiting)
    assert model.requests == [(1, "a"), (3, "r2,r3,r4")]
    assert [a["sum"].tolist() for a in answers] == [[[1]], [[2]], [[3]], [[4]]]
    assert [a["rows"].tolist() for a in answers[1:]] == [[3], [3], [3]]  # one shared request
    assert not coalescer._kinds


@synchronous
async def test_a_shared_request_holds_at_most_max_rows() -> None:
    coalescer, model = Coalescer(policy(rows=4)), FakeModel()
    model.gate.clear()
    tasks = [asyncio.create_task(call(coalescer, model, v)) for v in range(1, 7)]
    tasks.append(asyncio.create_task(call(coalescer, model, 9, rows=3)))
    await asyncio.sleep(0)
    model.gate.set()
    answers = await asyncio.gather(*tasks)
    assert [rows for rows, _ in model.requests] == [1, 4, 4]  # 2-5, then 6 and the three
    assert [a["sum"].tolist()[0] for a in answers] == [[1], [2], [3], [4], [5], [6], [9]]
    assert answers[-1]["sum"].tolist() == [[9], [9], [9]]


def test_calls_of_different_kinds_never_share() -> None:
    coalescer = Coalescer(policy())
    base = image(1)
    kinds = {
        coalescer.kind_of("digits", base, "", None, None),
        coalescer.kind_of("digits", base, "2", None, None),  # another version
        coalescer.kind_of("digits", base, "", ["labels"], None),  # other outputs
        coalescer.kind_of("digits", base, "", None, {"model_version": 3}),  # parameters
        coalescer.kind_of("digits", {"image": np.zeros((1, 3, 2), np.uint8)}, "", None, None),
        coalescer.kind_of("digits", {"image": np.zeros((1, 2, 2), np.int32)}, "", None, None),
        coalescer.kind_of("digits", {**base, "top_k": np.ones((1, 1), np.int32)}, "", None, None),
    }
    assert len(kinds) == 7 and None not in kinds
    assert coalescer.kind_of("other_model", base, "", None, None) is None
    assert coalescer.kind_of("digits", image(1, rows=9), "", None, None) is None  # > max_rows
    mismatched = {"image": np.zeros((2, 2, 2), np.uint8), "top_k": np.ones((1, 1), np.int32)}
    assert coalescer.kind_of("digits", mismatched, "", None, None) is None
    assert coalescer.kind_of("digits", {"image": np.array(5)}, "", None, None) is None
    assert coalescer.kind_of("digits", base, "", None, {"bad": [1]}) is None  # unhashable


@synchronous
async def test_a_refused_row_fails_only_its_own_call() -> None:
    coalescer, model = Coalescer(policy()), FakeModel()
    results = await burst(coalescer, model, [2, 13, 4])
    assert [rows for rows, _ in model.requests] == [1, 3, 1, 1, 1]  # shared, then alone
    assert results[0]["sum"].tolist() == [[1]] and results[1]["sum"].tolist() == [[2]]
    assert isinstance(results[2], HttpStatusError) and results[2].status == 400
    assert isinstance(translate(results[2], CallContext("infer", "digits")), InvalidInputError)
    assert results[3]["sum"].tolist() == [[4]]


@pytest.mark.parametrize("status", [503, 504])
@synchronous
async def test_a_server_failure_is_every_callers_and_not_sent_again(status: int) -> None:
    coalescer, model = Coalescer(policy()), FakeModel(HttpStatusError(status, "unavailable"))
    results = await burst(coalescer, model, [13, 2])
    assert [rows for rows, _ in model.requests] == [1, 2]  # no retry alone
    for failure in results[1:]:
        assert isinstance(failure, HttpStatusError) and failure.status == status
        mapped = translate(failure, CallContext("infer", "digits"))
        assert not isinstance(mapped, (InvalidInputError, ServerError)) or status == 504
    assert isinstance(translate(results[1], CallContext("infer")), ModelUnavailableError) or (
        status == 504
    )


@synchronous
async def test_a_caller_gone_while_waiting_is_not_sent() -> None:
    coalescer, model = Coalescer(policy()), FakeModel()
    model.gate.clear()
    first = asyncio.create_task(call(coalescer, model, 1))
    await asyncio.sleep(0)
    gone = asyncio.create_task(call(coalescer, model, 2, "gone"))
    kept = asyncio.create_task(call(coalescer, model, 3, "kept"))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    model.gate.set()
    assert (await kept)["sum"].tolist() == [[3]]
    await first
    assert model.requests == [(1, None), (1, "kept")]
    assert not coalescer._kinds and coalescer.pending() == 0


@synchronous
async def test_every_waiting_caller_gone_leaves_nothing_behind() -> None:
    coalescer, model = Coalescer(policy()), FakeModel()
    model.gate.clear()
    first = asyncio.create_task(call(coalescer, model, 1))
    await asyncio.sleep(0)
    gone = [asyncio.create_task(call(coalescer, model, v)) for v in (2, 3)]
    await asyncio.sleep(0)
    for task in gone:
        task.cancel()
    await asyncio.gather(*gone, return_exceptions=True)
    model.gate.set()
    await first
    assert model.requests == [(1, None)] and not coalescer._kinds


@synchronous
async def test_a_response_without_a_row_per_call_is_a_server_error() -> None:
    class Short(FakeModel):
        async def send(
            self, inputs: Any, timeout_s: float | None, rid: str | None
        ) -> InferResponse:
            answer = await super().send(inputs, timeout_s, rid)
            return InferResponse("digits", "1", {"sum": answer["sum"][:1]})

    coalescer, model = Coalescer(policy()), Short()
    results = await burst(coalescer, model, [2, 3])
    assert results[0]["sum"].tolist() == [[1]]
    assert all(isinstance(r, ServerError) and "not 2 rows" in str(r) for r in results[1:])


@synchronous
async def test_a_long_list_of_ids_is_cut_and_counted() -> None:
    coalescer, model = Coalescer(policy(rows=64)), FakeModel()
    await burst(coalescer, model, [2] * 10, ["x" * 100 + str(n) for n in range(10)])
    joined = model.requests[1][1]
    assert joined is not None and len(joined) <= MAX_JOINED_ID_CHARS + 16
    assert joined.endswith(",+5 more") and joined.count("x" * 100) == 5


def test_the_policy_refuses_empty_bounds() -> None:
    with pytest.raises(ValueError):
        Coalescing(frozenset({"digits"}), max_rows=0)
    with pytest.raises(ValueError):
        Coalescing(frozenset({"digits"}), max_in_flight=0)


def test_uniform_inputs_join_only_calls_with_equal_values() -> None:
    coalescer = Coalescer(
        Coalescing(frozenset({"digits"}), max_rows=8, uniform_inputs=frozenset({"top_k"}))
    )
    base = image(1)
    k3, k3_again, k2 = (
        coalescer.kind_of("digits", {**base, "top_k": np.full((1, 1), k, np.int32)}, "", None, None)
        for k in (3, 3, 2)
    )
    assert k3 == k3_again and k3 != k2
    mixed = {"image": np.zeros((2, 2, 2), np.uint8), "top_k": np.array([[1], [2]], np.int32)}
    assert coalescer.kind_of("digits", mixed, "", None, None) is None  # refused by the model


@synchronous
async def test_calls_that_fail_only_together_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    class Alone(FakeModel):
        async def send(
            self, inputs: Any, timeout_s: float | None, rid: str | None
        ) -> InferResponse:
            if inputs["image"].shape[0] > 1:
                self.requests.append((inputs["image"].shape[0], rid))
                raise HttpStatusError(400, "one value shared by every image of the request")
            return await super().send(inputs, timeout_s, rid)

    coalescer, model = Coalescer(policy()), Alone()
    answers = await burst(coalescer, model, [2, 3])
    assert [a["sum"].tolist() for a in answers] == [[[1]], [[2]], [[3]]]
    assert "failed together and succeeded alone" in caplog.text
