from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mlapi_backend.generation_batching import (
    PrefillCoalescer,
    StepCoalescer,
    pad_prompts,
    stream_prefill,
)


class BatchDecoder:
    """new state = state + token; logits = [token * 10]; records the batch sizes it ran."""

    def __init__(self, fail: bool = False) -> None:
        self.batch_sizes: list[int] = []
        self.fail = fail

    async def run(self, tokens: np.ndarray, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.batch_sizes.append(len(tokens))
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("decoder down")
        return tokens.astype(np.float32) * 10, states + tokens[:, :, None].astype(np.float32)


async def stream(step, token: int, steps: int) -> list[float]:
    state = np.zeros((1, 1, 2), dtype=np.float32)
    seen = []
    for _ in range(steps):
        logits, state = await step(np.array([[token]], dtype=np.int64), state)
        seen.append(float(logits[0]))
    return [*seen, float(state[0, 0, 0])]


def test_concurrent_streams_share_batches_and_get_their_own_results() -> None:
    decoder = BatchDecoder()
    coalescer = StepCoalescer(decoder.run, max_batch=64)

    async def go() -> list[list[float]]:
        return await asyncio.gather(*(stream(coalescer.step, t, 5) for t in range(1, 9)))

    results = asyncio.run(go())
    for token, seen in enumerate(results, start=1):
        assert seen == [token * 10.0] * 5 + [token * 5.0]
    assert decoder.batch_sizes == [8] * 5
    assert (coalescer.batches, coalescer.steps) == (5, 40)


def test_batches_are_capped() -> None:
    decoder = BatchDecoder()
    coalescer = StepCoalescer(decoder.run, max_batch=3)

    async def go() -> None:
        await asyncio.gather(*(stream(coalescer.step, t, 2) for t in range(1, 8)))

    asyncio.run(go())
    assert max(decoder.batch_sizes) == 3 and sum(decoder.batch_sizes) == 14


def test_a_failed_batch_fails_each_of_its_streams() -> None:
    coalescer = StepCoalescer(BatchDecoder(fail=True).run, max_batch=4)

    async def go() -> list:
        return await asyncio.gather(
            *(stream(coalescer.step, t, 1) for t in range(3)), return_exceptions=True
        )

    results = asyncio.run(go())
    assert all(isinstance(r, RuntimeError) for r in results)


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StepCoalescer(BatchDecoder().run, max_batch=0)


def test_stream_step_without_coalescing_calls_once_per_step() -> None:
    from mlapi_backend.generation_batching import stream_step

    decoder = BatchDecoder()
    step = stream_step(decoder.run, coalesce=False, max_batch=64)

    async def go() -> list[list[float]]:
        return await asyncio.gather(*(stream(step, t, 3) for t in (1, 2)))

    assert asyncio.run(go()) == [[10.0] * 3 + [3.0], [20.0] * 3 + [6.0]]
    assert decoder.batch_sizes == [1] * 6


class BatchPrefill:
    """logits = [sum of the first `length` tokens]; state = [length]; records what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[np.ndarray, np.ndarray]] = []

    async def run(self, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.sent.append((tokens.copy(), lengths.copy()))
        await asyncio.sleep(0)
        sums = [tokens[row, : int(n)].sum() for row, n in enumerate(lengths[:, 0])]
        logits = np.array(sums, dtype=np.float32)[:, None]
        return logits, lengths[:, :, None].astype(np.float32)


def test_prompts_starting_together_are_padded_into_one_call_with_their_lengths() -> None:
    model = BatchPrefill()
    prefill = stream_prefill(model.run, coalesce=True, max_batch=16)
    prompts = [np.arange(1, n + 1, dtype=np.int64)[None, :] for n in (3, 1, 5)]

    async def go() -> list[tuple[np.ndarray, np.ndarray]]:
        return await asyncio.gather(*(prefill(p) for p in prompts))

    results = asyncio.run(go())
    ((tokens, lengths),) = model.sent
    assert tokens.tolist() == [[1, 2, 3, 0, 0], [1, 0, 0, 0, 0], [1, 2, 3, 4, 5]]
    assert lengths.tolist() == [[3], [1], [5]]
    for (logits, state), n in zip(results, (3, 1, 5), strict=True):
        assert float(logits[0]) == n * (n + 1) / 2 and state.shape == (1, 1, 1)
        assert float(state[0, 0, 0]) == n


def test_prefill_batches_are_capped_and_uncoalesced_prompts_go_alone() -> None:
    model = BatchPrefill()
    capped = PrefillCoalescer(model.run, max_batch=2)
    single = stream_prefill(model.run, coalesce=False, max_batch=2)
    prompt = np.ones((1, 4), dtype=np.int64)

    async def go() -> None:
        await asyncio.gather(*(capped.prefill(prompt) for _ in range(5)))
        await single(prompt)

    asyncio.run(go())
    assert [len(t) for t, _ in model.sent] == [2, 2, 1, 1]
    assert model.sent[-1][1].tolist() == [[4]]


def test_pad_prompts() -> None:
    tokens, lengths = pad_prompts([np.array([[7, 8]]), np.array([[9]])])
    assert tokens.dtype == lengths.dtype == np.int64
    assert tokens.tolist() == [[7, 8], [9, 0]] and lengths.tolist() == [[2], [1]]
