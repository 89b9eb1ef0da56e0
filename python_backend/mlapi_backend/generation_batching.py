"""Coalesce the decode steps that concurrent streams request in the same event-loop turn.

Every stream of one ``text_generator`` instance runs as a coroutine on one event loop. When a
batched decode step returns, all its streams resume in the same turn, sample, and ask for their
next step; ``StepCoalescer`` gathers those asks and makes ONE batched call (one BLS request of
batch k) instead of k calls. Triton's dynamic batcher on the decoder still merges what
arrives from different instances or callers. Measured on the CPU stand-in (2 cores), the
per-request overhead of BLS, not the GRU itself, limited throughput; see docs/streaming.md.

``PrefillCoalescer`` does the same for prompts: the prompts of streams that start in the same
turn go to the prefill model as one batch, padded at the end to the longest, with each
prompt's length (the GRU stops there, so padding changes no result).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

Tokens = NDArray[np.int64]
States = NDArray[np.float32]
Logits = NDArray[np.float32]

# (tokens [k, 1] int64, states [k, layers, hidden] fp32) -> (logits [k, vocab], new states)
BatchStep = Callable[[Tokens, States], Awaitable[tuple[Logits, States]]]
# (token [1, 1], state [1, layers, hidden]) -> (logits [vocab], new state [1, layers, hidden])
StreamStep = Callable[[Tokens, States], Awaitable[tuple[Logits, States]]]
# (tokens [k, time] int64 padded, lengths [k, 1] int64) -> (logits [k, vocab], states)
BatchPrefill = Callable[[Tokens, Tokens], Awaitable[tuple[Logits, States]]]
# (prompt ids [1, time]) -> (logits [vocab] after the prompt, state [1, layers, hidden])
StreamPrefill = Callable[[Tokens], Awaitable[tuple[Logits, States]]]
_Pending = tuple[Tokens, States, asyncio.Future[tuple[Logits, States]]]
_AnyBatch = Callable[[NDArray[Any], NDArray[Any]], Awaitable[tuple[Logits, States]]]


class StepCoalescer:
    """A per-stream decode step (``step``) served by batched calls of at most ``max_batch``."""

    def __init__(self, run_batch: _AnyBatch, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self._pending: list[_Pending] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.steps = 0

    async def step(self, token: Tokens, state: States) -> tuple[Logits, States]:
        """One stream's step: token [1, 1], state [1, layers, hidden] -> (logits [vocab], state)."""
        return await self._submit(token, state)

    async def _submit(self, token: Tokens, state: States) -> tuple[Logits, States]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Logits, States]] = loop.create_future()
        self._pending.append((token, state, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # call_soon runs after the callbacks already queued: the other streams woken by
            # the same finished batch get to append their steps first.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending:
            group, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            task = asyncio.get_running_loop().create_task(self._run(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, group: list[_Pending]) -> None:
        live = [item for item in group if not item[2].cancelled()]
        if not live:
            return
        self.batches += 1
        self.steps += len(live)
        try:
            logits, new_states = await self._call([(first, second) for first, second, _ in live])
        except Exception as exc:  # delivered to every waiting stream, which decides what to do
            for _, _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for index, (_, _, future) in enumerate(live):
            if not future.done():
                future.set_result((logits[index], new_states[index : index + 1]))

    async def _call(self, items: list[tuple[Tokens, States]]) -> tuple[Logits, States]:
        tokens = np.concatenate([token for token, _ in items])
        states = np.concatenate([state for _, state in items])
        return await self.run_batch(tokens, states)


class PrefillCoalescer(StepCoalescer):
    """A per-stream prefill (``prefill``): concurrent prompts padded into batched calls."""

    async def prefill(self, prompt: Tokens) -> tuple[Logits, States]:
        """One stream's prompt: ids [1, time] -> (logits [vocab], state [1, layers, hidden])."""
        return await self._submit(prompt, np.zeros((0,), dtype=np.float32))

    async def _call(self, items: list[tuple[Tokens, States]]) -> tuple[Logits, States]:
        tokens, lengths = pad_prompts([prompt for prompt, _ in items])
        return await self.run_batch(tokens, lengths)


def pad_prompts(prompts: list[Tokens]) -> tuple[Tokens, Tokens]:
    """Prompts [1, time_i] -> (tokens [k, max time] padded with 0 at the end, lengths [k, 1])."""
    lengths = np.array([[prompt.shape[1]] for prompt in prompts], dtype=np.int64)
    tokens = np.zeros((len(prompts), int(lengths.max())), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        tokens[row, : prompt.shape[1]] = prompt[0]
    return tokens, lengths


def stream_step(run_batch: BatchStep, coalesce: bool, max_batch: int) -> StreamStep:
    """Return the per-stream decode step over ``run_batch``: coalesced, or one call per step."""
    if coalesce:
        return StepCoalescer(run_batch, max_batch).step

    async def single(token: Tokens, state: States) -> tuple[Logits, States]:
        logits, new_state = await run_batch(token, state)
        return logits[0], new_state

    return single


def stream_prefill(run_batch: BatchPrefill, coalesce: bool, max_batch: int) -> StreamPrefill:
    """Return the per-stream prefill over ``run_batch``: coalesced, or one call per prompt."""
    if coalesce:
        return PrefillCoalescer(run_batch, max_batch).prefill

    async def single(prompt: Tokens) -> tuple[Logits, States]:
        logits, state = await run_batch(prompt, np.array([[prompt.shape[1]]], dtype=np.int64))
        return logits[0], state

    return single
