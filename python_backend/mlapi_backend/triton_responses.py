"""Turn per-request results into Triton responses, so no request can fail its batch-mates.

Every model.py answers through ``respond`` (batched models) or ``send_stream`` (decoupled
models). An expected error (InvalidInputError, UnavailableError) keeps its status; anything
else (a bug) becomes INTERNAL for that one request and goes to the model's FailureLog with its
request id. The library never imports ``triton_python_backend_utils``; the model passes the
module in, so this stays testable with plain pytest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, TypeVar

from numpy.typing import NDArray

from mlapi_backend.errors import InvalidInputError, MlapiBackendError, UnavailableError
from mlapi_backend.failure_log import FailureLog

Outputs = Mapping[str, NDArray[Any]]
Result = Outputs | Exception
Prepared = TypeVar("Prepared")
Run = Callable[[Sequence[Prepared | Exception]], Sequence[Result]]
Chunks = AsyncGenerator[tuple[Outputs, bool], None]


def error_code(error: Exception, pb_utils: Any) -> Any:
    """Return the TritonError code for a failed request: 400, 503 or (a bug, a crash) 500."""
    if isinstance(error, InvalidInputError):
        return pb_utils.TritonError.INVALID_ARG
    if isinstance(error, UnavailableError):
        return pb_utils.TritonError.UNAVAILABLE
    return pb_utils.TritonError.INTERNAL


def respond(
    requests: Sequence[Any],
    prepare: Callable[[Any], Prepared],
    run: Run[Prepared],
    pb_utils: Any,
    log: FailureLog,
) -> list[Any]:
    """Answer a batch of requests: ``prepare`` each, ``run`` them together, one response each.

    ``prepare`` reads and checks one request (its exception fails that request only); ``run``
    serves the prepared list (exceptions passed through in place) and returns one result per
    entry. Should ``run`` itself raise, the requests are rerun to find the one that provokes
    it (see ``_rerun``), so only that one fails. Nothing raises out of here.
    """
    log.flush()
    prepared: list[Prepared | Exception] = []
    for request in requests:
        try:
            prepared.append(prepare(request))
        except Exception as exc:
            prepared.append(exc)
    try:
        results = _checked(run(prepared), len(prepared))
    except Exception as exc:
        results = _rerun(run, prepared, exc, log)
    return [
        _response(request, result, pb_utils, log)
        for request, result in zip(requests, results, strict=True)
    ]


def _rerun(
    run: Run[Prepared], prepared: list[Prepared | Exception], failure: Exception, log: FailureLog
) -> list[Result]:
    """Results of a batch whose ``run`` raised ``failure``: each request rerun alone, mostly.

    When the first request rerun alone fails the same way (same exception type), either it
    provokes the failure or every request does (a systematic fault): the others are run
    together once more, and if that fails the same way too they all get that error instead of
    N more runs (for ``digits``, N more classifier calls).
    """
    results: list[Result] = [item if isinstance(item, Exception) else failure for item in prepared]
    pending = [i for i, item in enumerate(prepared) if not isinstance(item, Exception)]
    if len(prepared) == 1 or not pending:  # nothing to isolate: each keeps its own error
        return results
    log.batch_failed(len(prepared), failure, "rerunning its requests one by one")
    first, rest = pending[0], pending[1:]
    try:
        results[first] = _checked(run([prepared[first]]), 1)[0]
    except Exception as exc:
        results[first] = exc
        if rest and type(exc) is type(failure):
            try:
                for index, result in zip(
                    rest, _checked(run([prepared[i] for i in rest]), len(rest)), strict=True
                ):
                    results[index] = result
                return results
            except Exception as again:
                if type(again) is type(failure):
                    log.batch_failed(len(rest), again, "failing them all without rerunning")
                    for index in rest:
                        results[index] = again
                    return results
    for index in rest:
        try:
            results[index] = _checked(run([prepared[index]]), 1)[0]
        except Exception as exc:
            results[index] = exc
    return results


def _checked(results: Sequence[Result], expected: int) -> list[Result]:
    if len(results) != expected:
        raise RuntimeError(f"{len(results)} results for {expected} requests")
    return list(results)


def _response(request: Any, result: Result, pb_utils: Any, log: FailureLog) -> Any:
    if not isinstance(result, Exception):
        try:
            tensors = [pb_utils.Tensor(name, array) for name, array in result.items()]
            return pb_utils.InferenceResponse(tensors)
        except Exception as exc:  # e.g. an output array the server cannot carry
            result = exc
    return error_response(result, request_id(request), pb_utils, log)


def error_response(error: Exception, request_id: str, pb_utils: Any, log: FailureLog) -> Any:
    """Build the error response for ``error``; an unexpected one is logged and made INTERNAL.

    The caller sees an expected error's own message; for a bug, the exception's type and text
    and the request id, which the logged traceback also names.
    """
    if isinstance(error, MlapiBackendError):
        message = str(error)
    else:
        log.request_failed(request_id, error)
        message = (
            f"{log.model}: internal error serving request '{request_id}': "
            f"{type(error).__name__}: {error}"
        )
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, error_code(error, pb_utils))
    )


def request_id(request: Any) -> str:
    """Return the request's id as the caller sent it ("" when it sent none)."""
    try:
        return str(request.request_id())
    except Exception:  # an id is for the log; never fail a request over it
        return ""


async def send_stream(
    sender: Any, chunks: Chunks, pb_utils: Any, log: FailureLog, request_id: str
) -> None:
    """Send a decoupled request's responses: each ``(outputs, is_last)`` of ``chunks``, in order.

    Any exception from ``chunks`` or from a send ends this stream with an error response
    carrying the final flag (INTERNAL, logged, for a bug) and never reaches the other streams
    of the instance; so does cancellation (CANCELLED), which then propagates. A stream that
    ends without a last chunk is closed with the final flag alone. ``chunks`` is closed
    however the stream ends.
    """
    log.flush()
    final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    finished = False  # the final flag has been delivered
    try:
        async for outputs, is_last in chunks:
            if finished:
                raise RuntimeError("a response after the stream's last one")
            tensors = [pb_utils.Tensor(name, array) for name, array in outputs.items()]
            sender.send(pb_utils.InferenceResponse(tensors), flags=final if is_last else 0)
            finished = is_last
        if not finished:
            sender.send(flags=final)
            finished = True
    except Exception as exc:
        if finished:  # the caller has its answer; nothing more can be sent
            log.request_failed(request_id, exc, "failed after its last response")
        else:
            _send_final(
                sender, error_response(exc, request_id, pb_utils, log), final, log, request_id
            )
    except asyncio.CancelledError:
        if not finished:
            error = pb_utils.TritonError(
                f"{log.model}: request '{request_id}' was cancelled before its last response",
                pb_utils.TritonError.CANCELLED,
            )
            _send_final(sender, pb_utils.InferenceResponse(error=error), final, log, request_id)
        raise
    finally:
        await _close(chunks, log, request_id)


def _send_final(sender: Any, response: Any, final: Any, log: FailureLog, request_id: str) -> None:
    try:
        sender.send(response, flags=final)
    except Exception as exc:  # e.g. the stream was cancelled and closed meanwhile
        log.request_failed(request_id, exc, "cannot send its error")


async def _close(chunks: Chunks, log: FailureLog, request_id: str) -> None:
    """Close ``chunks`` (a no-op once it is exhausted), so its own clean-up runs now."""
    try:
        await chunks.aclose()
    except Exception as exc:
        log.request_failed(request_id, exc, "failed while closing its stream")
