"""Turn per-request results into Triton responses, so no request can fail its batch-mates.

Every model.py answers through ``respond`` (batched models) or ``send_stream`` (decoupled
models). An expected error (InvalidInputError, UnavailableError) keeps its status; anything
else (a bug) becomes INTERNAL for that one request and is logged with its request id. The
library never imports ``triton_python_backend_utils``; the model passes the module in, so this
stays testable with plain pytest.
"""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from numpy.typing import NDArray

from mlapi_backend.errors import InvalidInputError, MlapiBackendError, UnavailableError

Outputs = Mapping[str, NDArray[Any]]
Result = Outputs | Exception
Prepared = TypeVar("Prepared")


def error_code(error: Exception, pb_utils: Any) -> Any:
    """Return the TritonError code for a failed request: 400, 503 or (a bug, a crash) 500."""
    if isinstance(error, InvalidInputError):
        return pb_utils.TritonError.INVALID_ARG
    if isinstance(error, UnavailableError):
        return pb_utils.TritonError.UNAVAILABLE
    return pb_utils.TritonError.INTERNAL


def to_responses(results: Sequence[Result], pb_utils: Any) -> list[Any]:
    """Build one InferenceResponse per result; a failed request gets its own error.

    InvalidInputError -> INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT), UnavailableError ->
    UNAVAILABLE (HTTP 503), anything else -> INTERNAL.
    """
    responses = []
    for result in results:
        if isinstance(result, Exception):
            code = error_code(result, pb_utils)
            responses.append(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result), code))
            )
        else:
            tensors = [pb_utils.Tensor(name, array) for name, array in result.items()]
            responses.append(pb_utils.InferenceResponse(tensors))
    return responses


def respond(
    requests: Sequence[Any],
    prepare: Callable[[Any], Prepared],
    run: Callable[[Sequence[Prepared | Exception]], Sequence[Result]],
    pb_utils: Any,
    model: str,
) -> list[Any]:
    """Answer a batch of requests: ``prepare`` each, ``run`` them together, one response each.

    ``prepare`` reads and checks one request (its exception fails that request only); ``run``
    serves the prepared list (exceptions passed through in place) and returns one result per
    entry. Should ``run`` itself raise, each request is run alone, so only the one that
    provokes the failure fails. Nothing raises out of here.
    """
    prepared: list[Prepared | Exception] = []
    for request in requests:
        try:
            prepared.append(prepare(request))
        except Exception as exc:
            prepared.append(exc)
    results = _run_isolated(run, prepared, pb_utils, model)
    return [
        _response(request, result, pb_utils, model)
        for request, result in zip(requests, results, strict=True)
    ]


def _run_isolated(
    run: Callable[[Sequence[Prepared | Exception]], Sequence[Result]],
    prepared: list[Prepared | Exception],
    pb_utils: Any,
    model: str,
) -> list[Result]:
    try:
        return _checked(run(prepared), len(prepared))
    except Exception as exc:
        if len(prepared) == 1:  # a request that failed to prepare keeps its own error
            return [prepared[0] if isinstance(prepared[0], Exception) else exc]
        pb_utils.Logger.log_warn(
            f"{model}: a batch of {len(prepared)} failed ({type(exc).__name__}: {exc}); "
            "running its requests one by one"
        )
    results: list[Result] = []
    for item in prepared:
        if isinstance(item, Exception):
            results.append(item)
            continue
        try:
            results.append(_checked(run([item]), 1)[0])
        except Exception as exc:
            results.append(exc)
    return results


def _checked(results: Sequence[Result], expected: int) -> list[Result]:
    if len(results) != expected:
        raise RuntimeError(f"{len(results)} results for {expected} requests")
    return list(results)


def _response(request: Any, result: Result, pb_utils: Any, model: str) -> Any:
    if not isinstance(result, Exception):
        try:
            tensors = [pb_utils.Tensor(name, array) for name, array in result.items()]
            return pb_utils.InferenceResponse(tensors)
        except Exception as exc:  # e.g. an output array the server cannot carry
            result = exc
    return error_response(result, request_id(request), pb_utils, model)


def error_response(error: Exception, request_id: str, pb_utils: Any, model: str) -> Any:
    """Build the error response for ``error``; an unexpected one is logged and made INTERNAL.

    The caller sees an expected error's own message; for a bug, the exception's type and text
    and the request id, which the logged traceback also names.
    """
    if isinstance(error, MlapiBackendError):
        message = str(error)
    else:
        trace = "".join(traceback.format_exception(error)).rstrip()
        pb_utils.Logger.log_error(f"{model}: request '{request_id}' failed:\n{trace}")
        message = (
            f"{model}: internal error serving request '{request_id}': "
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
    sender: Any,
    chunks: AsyncIterable[tuple[Outputs, bool]],
    pb_utils: Any,
    model: str,
    request_id: str,
) -> None:
    """Send a decoupled request's responses: each ``(outputs, is_last)`` of ``chunks``, in order.

    Any exception from ``chunks`` ends this stream with an error response carrying the final
    flag (INTERNAL, logged, for a bug) and never reaches the other streams of the instance.
    A stream that ends without a last chunk is closed with the final flag alone.
    """
    final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    closed = False
    try:
        async for outputs, is_last in chunks:
            if closed:
                raise RuntimeError("a response after the stream's last one")
            tensors = [pb_utils.Tensor(name, array) for name, array in outputs.items()]
            sender.send(pb_utils.InferenceResponse(tensors), flags=final if is_last else 0)
            closed = is_last
        if not closed:
            closed = True
            sender.send(flags=final)
    except Exception as exc:
        if closed:  # the caller has its answer; nothing more can be sent
            pb_utils.Logger.log_error(
                f"{model}: request '{request_id}' failed after its last response: {exc!r}"
            )
            return
        try:
            sender.send(error_response(exc, request_id, pb_utils, model), flags=final)
        except Exception as send_failure:  # e.g. the stream was cancelled and closed meanwhile
            pb_utils.Logger.log_error(
                f"{model}: request '{request_id}': cannot send its error: {send_failure!r}"
            )
