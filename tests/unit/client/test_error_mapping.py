"""Protocol failures -> MlapiError classes (pure mapping; real exception objects, no server)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from tritonclient.utils import InferenceServerException

from mlapi_client import access
from mlapi_client.error_mapping import (
    DEAD_STUB_RETRY_AFTER_S,
    CallContext,
    ChannelUnreachableError,
    HttpStatusError,
    StreamError,
    not_found_or_unavailable,
    translate,
    translated,
)
from mlapi_client.errors import (
    AccessDeniedError,
    ConnectionFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    MlapiError,
    ModelCrashedError,
    ModelNotFoundError,
    ModelUnavailableError,
    ServerError,
    ServerOverloadedError,
    UnsupportedRequestError,
)

CTX = CallContext("infer", "digits", "", 2.0)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("400", InvalidInputError),
        ("404", ModelNotFoundError),
        ("429", ServerOverloadedError),
        ("500", ServerError),
        ("501", UnsupportedRequestError),
        ("503", ModelUnavailableError),
        ("504", InferenceTimeoutError),
        ("StatusCode.INVALID_ARGUMENT", InvalidInputError),
        ("StatusCode.NOT_FOUND", ModelNotFoundError),
        ("StatusCode.UNAVAILABLE", ModelUnavailableError),
        ("StatusCode.UNIMPLEMENTED", UnsupportedRequestError),
        ("StatusCode.DEADLINE_EXCEEDED", InferenceTimeoutError),
        ("StatusCode.RESOURCE_EXHAUSTED", ServerOverloadedError),
        ("StatusCode.INTERNAL", ServerError),
    ],
)
def test_status_picks_the_class(status: str, expected: type[MlapiError]) -> None:
    error = translate(InferenceServerException("some message", status=status), CTX)
    assert type(error) is expected
    assert error.status == status.removeprefix("StatusCode.")


@pytest.mark.parametrize("message", ["Exceeds maximum queue size", "Request timeout expired"])
@pytest.mark.parametrize("status", ["503", "StatusCode.UNAVAILABLE"])
def test_full_queue_is_overloaded(status: str, message: str) -> None:
    error = translate(
        InferenceServerException(f"[request id: <id_unknown>] {message}", status=status), CTX
    )
    assert type(error) is ServerOverloadedError
    assert error.retryable


def test_backend_invalid_input_fields_are_parsed() -> None:
    message = "input 'top_k': expected an integer in 1..10, got 50"
    error = translate(HttpStatusError(400, message), CTX)
    assert isinstance(error, InvalidInputError)
    assert (error.field, error.expected, error.got) == ("top_k", "an integer in 1..10", "50")
    assert not error.retryable
    assert "digits" in str(error)


def test_core_dtype_message_is_parsed() -> None:
    message = (
        "[request id: <id_unknown>] inference input 'image' data-type is 'FP32', "
        "but model 'digits' expects 'UINT8'"
    )
    error = translate(InferenceServerException(message, status="StatusCode.INVALID_ARGUMENT"), CTX)
    assert isinstance(error, InvalidInputError)
    assert (error.field, error.expected, error.got) == ("image", "UINT8", "FP32")


def test_unparseable_invalid_input_keeps_the_message() -> None:
    error = translate(HttpStatusError(400, "something odd"), CTX)
    assert isinstance(error, InvalidInputError)
    assert error.field is None
    assert "something odd" in str(error)


def test_retry_after_travels_with_unavailable() -> None:
    error = translate(HttpStatusError(503, "busy", retry_after_s=7.0), CTX)
    assert isinstance(error, ModelUnavailableError)
    assert error.retry_after_s == 7.0


def test_timeouts_name_the_remedy() -> None:
    error = translate(asyncio.TimeoutError(), CTX)
    assert isinstance(error, InferenceTimeoutError)
    text = str(error)
    assert "within 2 s" in text
    assert "smaller input" in text
    assert "asynchronous API" in text


@pytest.mark.parametrize(
    "exc",
    [
        ChannelUnreachableError("failed to connect to all addresses"),
        ConnectionRefusedError(111, "refused"),
        aiohttp.ServerDisconnectedError(),
    ],
)
def test_connection_failures(exc: BaseException) -> None:
    error = translate(exc, CTX)
    assert type(error) is ConnectionFailedError
    assert error.retryable


def test_client_side_tritonclient_error_is_invalid_input() -> None:
    assert isinstance(translate(InferenceServerException("bad shape"), CTX), InvalidInputError)


def test_unknown_exceptions_are_server_errors() -> None:
    assert type(translate(KeyError("x"), CTX)) is ServerError


def test_mlapi_errors_pass_through() -> None:
    original = ModelNotFoundError("gone")
    assert translate(original, CTX) is original


def test_translated_chains_the_cause() -> None:
    async def fail() -> None:
        async with translated(CTX):
            raise HttpStatusError(404, "Request for unknown model: 'digits' is not found")

    with pytest.raises(ModelNotFoundError) as info:
        asyncio.run(fail())
    assert isinstance(info.value.__cause__, HttpStatusError)


def test_translated_lets_cancellation_through() -> None:
    async def cancelled() -> None:
        async with translated(CTX):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled())


INDEX = [
    {"name": "slow", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
    {"name": "digits", "version": "1", "state": "READY"},
]


def test_model_in_the_index_is_unavailable_not_missing() -> None:
    error = ModelNotFoundError("not found", status="404")
    refined = not_found_or_unavailable(error, INDEX, CallContext("infer", "slow", ""))
    assert type(refined) is ModelUnavailableError
    assert "UNAVAILABLE (unloaded)" in str(refined)


@pytest.mark.parametrize(("model", "version"), [("nope", ""), ("slow", "7")])
def test_model_or_version_absent_from_the_index_stays_not_found(model: str, version: str) -> None:
    error = ModelNotFoundError("not found", status="404")
    assert not_found_or_unavailable(error, INDEX, CallContext("infer", model, version)) is error


def test_statusless_stream_errors_are_classified_by_tritons_message_forms() -> None:
    unknown = translate(StreamError("Request for unknown model: 'x' is not found"), CTX)
    assert type(unknown) is ModelNotFoundError
    invalid = translate(StreamError("input 'count': expected INT32 [1], got no 'count' input"), CTX)
    assert isinstance(invalid, InvalidInputError)
    assert invalid.field == "count"
    assert type(translate(StreamError("model crashed"), CTX)) is ServerError


# Triton 2.51's messages, as a restricted server and a dead Python stub send them.
DEAD_STUB = "Stub process 'digits_classifier_0_0' is not healthy."
HTTP_REFUSED = "This API is restricted, expecting header 'mlapi-triton-key'"
GRPC_REFUSED = (
    "This protocol is restricted, expecting header 'triton-grpc-protocol-mlapi-triton-key'"
)


@pytest.mark.parametrize("status", ["500", "StatusCode.INTERNAL"])
def test_a_dead_stub_is_a_retryable_unavailable_model(status: str) -> None:
    error = translate(InferenceServerException(DEAD_STUB, status=status), CTX)
    assert type(error) is ModelCrashedError
    assert isinstance(error, ModelUnavailableError)
    assert error.retryable
    assert error.status == status.removeprefix("StatusCode.")
    assert "reloaded" in str(error)
    assert error.retry_after_s == DEAD_STUB_RETRY_AFTER_S  # callers wait out the reload


def test_a_dead_stub_named_inside_a_bls_models_message_is_unavailable_too() -> None:
    message = f"digits_classifier version 2 failed: {DEAD_STUB}"
    assert type(translate(HttpStatusError(500, message), CTX)) is ModelCrashedError
    assert type(translate(StreamError(DEAD_STUB), CTX)) is ModelCrashedError


def test_other_internal_errors_stay_server_errors() -> None:
    error = translate(HttpStatusError(500, "Stub process is healthy but the model raised"), CTX)
    assert type(error) is ServerError
    assert not error.retryable


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (HttpStatusError(403, HTTP_REFUSED), "403"),
        (InferenceServerException(HTTP_REFUSED, status="403"), "403"),
        (InferenceServerException(GRPC_REFUSED, status="StatusCode.UNAVAILABLE"), "UNAVAILABLE"),
        (StreamError(GRPC_REFUSED), None),
    ],
)
def test_a_restricted_api_refusal_names_the_key_and_is_not_retried(
    exc: BaseException, status: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(access.KEY_FILE_ENV, "/srv/secrets/triton.key")
    error = translate(exc, CTX)
    assert type(error) is AccessDeniedError
    assert not error.retryable
    assert error.status == status
    text = str(error)
    assert "access key is missing or wrong" in text
    assert access.KEY_ENV in text
    assert "/srv/secrets/triton.key" in text


def test_other_grpc_unavailable_stays_an_unavailable_model() -> None:
    error = translate(
        InferenceServerException("Request for unknown model", status="StatusCode.UNAVAILABLE"),
        CTX,
    )
    assert type(error) is ModelUnavailableError


@pytest.mark.parametrize(
    "message",
    [
        "unexpected inference input 'bogus' for model 'text_generator'",
        "[request id: <id_unknown>] expected number of inputs between 1 and 10 but got 0 inputs "
        "for model 'text_generator'",
        "[request id: <id_unknown>] expected 2 inputs but missing required input(s) 'text_input'",
    ],
)
def test_tritons_own_request_checks_on_a_stream_are_invalid_input(message: str) -> None:
    from mlapi_client.error_mapping import StreamError

    error = translate(StreamError(message), CallContext("stream", "text_generator"))
    assert isinstance(error, InvalidInputError), error


def test_a_dead_stub_reported_as_a_400_by_generate_stream_is_a_crash_not_bad_input() -> None:
    from mlapi_client.error_mapping import HttpStatusError
    from mlapi_client.errors import ModelCrashedError

    failure = HttpStatusError(400, "Stub process 'text_generator_0_0' is not healthy.")
    error = translate(failure, CallContext("stream", "text_generator"))
    assert isinstance(error, ModelCrashedError) and error.retryable
