"""Concurrent calls of one batched model joined into one Triton request while Triton is busy.

Triton's cost of a request is mostly per request, not per row: on the 2-CPU development box,
``digits`` over HTTP serves about 2,400 requests/s of one image and 2,000 requests/s of four
(3.3x the images). A caller that sends many small requests at once, such as the gateway, can
let its calls share requests: a call is sent at once while fewer than ``max_in_flight``
requests of its kind are out; otherwise it waits for the next one to come back, and every
call that waited meanwhile leaves in one request, its rows concatenated along the batch
dimension (up to ``max_rows``). Nothing waits on a timer: a lone caller is sent at once.

Calls join only when the model's answers are a function of each row alone (the models named in
``Coalescing.models``) and the calls agree on everything but their rows: model, version,
requested outputs, parameters, and each input's name, dtype and shape after the batch
dimension. Each call keeps its own deadline (a shared request runs until the latest of its
callers' deadlines; a caller past its own gets its timeout) and its own error: when a shared
request is refused (invalid input) or fails inside the model, its calls are sent again one by
one, so that only the call at fault sees the failure. Failures of the server or the connection
(unavailable, overloaded, timeout, unreachable) are every caller's. The shared request's id is
its callers' ids joined by commas, so Triton's logs still name every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mlapi_client.error_mapping import CallContext, translate
from mlapi_client.errors import InvalidInputError, ServerError
from mlapi_client.results import InferResponse

log = logging.getLogger(__name__)
# A shared request's id lists its callers' ids up to this length, then how many more.
MAX_JOINED_ID_CHARS = 512

Send = Callable[
    [Mapping[str, npt.NDArray[Any]], float | None, str | None], Awaitable[InferResponse]
]


@dataclass(frozen=True)
class Coalescing:
    """Which models' calls may share a request, and how many rows and requests at most.

    ``max_rows`` must not exceed the model's ``max_batch_size``; ``max_in_flight`` is how
    many requests of one kind are out before calls start to wait (and so to join).
    ``uniform_inputs`` names inputs that a model reads once per request (``digits``'s
    ``top_k``: one value for every image): calls share a request only when their values of
    those are equal too.
    """

    models: frozenset[str] = frozenset()
    max_rows: int = 8
    max_in_flight: int = 2
    uniform_inputs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_in_flight < 1:
            raise ValueError("max_rows and max_in_flight must be at least 1")


@dataclass
class _Call:
    inputs: Mapping[str, npt.NDArray[Any]]
    rows: int
    timeout_s: float | None
    request_id: str | None
    answer: asyncio.Future[InferResponse]


@dataclass
class _Kind:
    """The calls of one kind (they may share a request): waiting ones, requests out."""

    in_flight: int = 0
    waiting: deque[_Call] = field(default_factory=deque)


class Coalescer:
    """Joins concurrent calls of the same kind (see the module) into shared requests."""

    def __init__(self, policy: Coalescing) -> None:
        self.policy = policy
        self._kinds: dict[Any, _Kind] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def kind_of(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str,
        outputs: Sequence[str] | None,
        parameters: Mapping[str, Any] | None,
    ) -> tuple[Any, int] | None:
        """Return the call's kind and row count, or None when it must be sent alone."""
        if model not in self.policy.models or not inputs:
            return None
        rows = None
        signature: list[tuple[Any, ...]] = []
        for name in sorted(inputs):
            array = inputs[name]
            if array.ndim < 1 or (rows is not None and array.shape[0] != rows):
                return None
            rows = array.shape[0]
            signature.append((name, array.dtype.str, array.shape[1:]))
            if name in self.policy.uniform_inputs:
                values = array.reshape(rows, -1)
                if rows > 1 and not (values == values[0]).all():
                    return None  # the model would refuse them in one request too
                signature.append((name, values[0].tobytes()))
        if not rows or rows > self.policy.max_rows:
            return None
        try:
            settings = tuple(sorted((parameters or {}).items()))
            kind = (model, version, tuple(outputs) if outputs else None, settings, tuple(signature))
            hash(kind)
        except TypeError:  # an unhashable parameter value: not worth joining
            return None
        return kind, rows

    async def call(
        self,
        kind: Any,
        rows: int,
        inputs: Mapping[str, npt.NDArray[Any]],
        timeout_s: float | None,
        request_id: str | None,
        send: Send,
    ) -> InferResponse:
        """Answer one call: sent at once, or in the next request of its kind.

        ``send(inputs, timeout_s, request_id)`` makes one request (raw transport errors). The
        caller's cancellation (its deadline included) leaves a shared request running for the
        others.
        """
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = _Kind()
        if state.in_flight < self.policy.max_in_flight and not state.waiting:
            state.in_flight += 1  # sent at once, by the caller itself: no task, no future
            try:
                return await send(inputs, timeout_s, request_id)
            finally:
                state.in_flight -= 1
                self._next(kind, state, send)
        answer: asyncio.Future[InferResponse] = asyncio.get_running_loop().create_future()
        state.waiting.append(_Call(inputs, rows, timeout_s, request_id, answer))
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            answer.cancel()  # a waiting call is dropped; a sent one's rows are not read
            raise

    def _next(self, kind: Any, state: _Kind, send: Send) -> None:
        """After a request of ``kind`` came back: send the calls that waited, or forget it."""
        if state.waiting:
            self._dispatch(kind, state, send)
        elif not state.in_flight:
            self._kinds.pop(kind, None)

    def _dispatch(self, kind: Any, state: _Kind, send: Send) -> None:
        """Send the waiting calls of ``kind`` as one request (up to max_rows)."""
        calls: list[_Call] = []
        rows = 0
        while state.waiting and rows + state.waiting[0].rows <= self.policy.max_rows:
            call = state.waiting.popleft()
            if not call.answer.done():  # else its caller is gone (cancelled, past its deadline)
                rows += call.rows
                calls.append(call)
        if not calls:  # every waiting call was gone
            if not state.in_flight:
                self._kinds.pop(kind, None)
            return
        state.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(kind, state, calls, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, kind: Any, state: _Kind, calls: list[_Call], send: Send) -> None:
        try:
            if len(calls) == 1:
                await _answer_alone(calls[0], send)
            else:
                await self._answer_shared(calls, send)
        finally:
            state.in_flight -= 1
            self._next(kind, state, send)

    async def _answer_shared(self, calls: list[_Call], send: Send) -> None:
        joined = {name: np.concatenate([c.inputs[name] for c in calls]) for name in calls[0].inputs}
        limits = [c.timeout_s for c in calls]
        timeout_s = None if None in limits else max(t for t in limits if t is not None)
        try:
            response = await send(joined, timeout_s, _joined_id(calls))
        except asyncio.CancelledError:
            _fail(calls, asyncio.CancelledError())
            raise
        except Exception as exc:  # the raw transport error; translated by each caller
            if _one_call_at_fault(exc):
                await asyncio.gather(*(_answer_alone(c, send) for c in calls))
                alone = sum(not c.answer.cancelled() and c.answer.exception() is None
                            for c in calls if c.answer.done())  # fmt: skip
                if alone == len(calls):  # every call was fine alone: they must not share
                    log.warning(
                        "%d calls of one kind failed together and succeeded alone (%s): does "
                        "the model read an input once per request (uniform_inputs)?",
                        len(calls), exc,
                    )  # fmt: skip
            else:
                _fail(calls, exc)
            return
        try:
            answers = _split(response, [c.rows for c in calls])
        except ValueError as exc:
            _fail(calls, ServerError(f"model '{response.model_name}': {exc}"))
            return
        for call, answer in zip(calls, answers, strict=True):
            if not call.answer.done():
                call.answer.set_result(answer)

    def pending(self) -> int:
        """How many shared requests are out (for tests and shutdown)."""
        return len(self._tasks)


async def _answer_alone(call: _Call, send: Send) -> None:
    try:
        response = await send(call.inputs, call.timeout_s, call.request_id)
    except asyncio.CancelledError:
        _fail([call], asyncio.CancelledError())
        raise
    except Exception as exc:
        _fail([call], exc)
        return
    if not call.answer.done():
        call.answer.set_result(response)


def _fail(calls: list[_Call], exc: BaseException) -> None:
    for call in calls:
        if not call.answer.done():
            if isinstance(exc, asyncio.CancelledError):
                call.answer.cancel()
            else:
                call.answer.set_exception(exc)


def _one_call_at_fault(exc: Exception) -> bool:
    """Whether a shared request's failure may be one call's: refused input, a model error."""
    error = translate(exc, CallContext("infer"))
    return type(error) in (InvalidInputError, ServerError)


def _joined_id(calls: list[_Call]) -> str | None:
    ids = [c.request_id for c in calls if c.request_id]
    if not ids:
        return None
    joined, count = "", 0
    for request_id in ids:
        candidate = f"{joined},{request_id}" if joined else request_id
        if len(candidate) > MAX_JOINED_ID_CHARS:
            break
        joined, count = candidate, count + 1
    return joined if count == len(ids) else f"{joined},+{len(ids) - count} more"


def _split(response: InferResponse, rows: list[int]) -> list[InferResponse]:
    """Cut a shared response into its callers' responses, ``rows`` each, in order."""
    total = sum(rows)
    for name, array in response.outputs.items():
        if array.ndim < 1 or array.shape[0] != total:
            raise ValueError(f"output '{name}' has shape {list(array.shape)}, not {total} rows")
    answers = []
    start = 0
    for count in rows:
        end = start + count
        outputs = {name: array[start:end] for name, array in response.outputs.items()}
        answers.append(InferResponse(response.model_name, response.model_version, outputs))
        start = end
    return answers
