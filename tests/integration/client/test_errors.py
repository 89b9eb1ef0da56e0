"""Each typed error, provoked for real against the running server, over both protocols."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlapi_client import (
    AsyncClient,
    Client,
    InferenceTimeoutError,
    InvalidInputError,
    MlapiError,
    ModelNotFoundError,
    ServerOverloadedError,
)

from .conftest import PATIENT, Api

IMAGE = np.zeros((1, 8, 8), np.uint8)


def delay(ms: int) -> dict[str, np.ndarray]:
    return {"delay_ms": np.array([[ms]], np.int32)}


def assert_healthy(api: Api) -> None:
    """A failed request changed nothing: the server and digits still answer."""
    assert api("is_ready", "digits") is True
    assert api("digits", IMAGE[0]).model_version in ("1", "2")


def test_bad_dtype_names_the_field(api: Api) -> None:
    with pytest.raises(InvalidInputError) as info:
        api("infer", "digits", {"image": IMAGE.astype(np.float32)})
    error = info.value
    assert (error.field, error.expected, error.got) == ("image", "UINT8", "FP32")
    assert error.status in ("400", "INVALID_ARGUMENT")
    assert_healthy(api)


def test_invalid_value_from_the_model_names_the_field(api: Api) -> None:
    with pytest.raises(InvalidInputError) as info:
        api("digits", IMAGE[0], top_k=50)
    assert (info.value.field, info.value.got) == ("top_k", "50")
    assert "1..10" in str(info.value.expected)
    assert_healthy(api)


def test_image_too_small(api: Api) -> None:
    with pytest.raises(InvalidInputError) as info:
        api("digits", np.zeros((2, 2), np.uint8))
    assert info.value.field == "image"
    assert_healthy(api)


def test_unknown_model(api: Api) -> None:
    with pytest.raises(ModelNotFoundError, match="no_such_model") as info:
        api("infer", "no_such_model", {"image": IMAGE})
    assert info.value.status in ("404", "NOT_FOUND")


def test_version_that_is_not_served(api: Api) -> None:
    pixels = {"pixels": np.zeros((1, 64), np.float32)}
    with pytest.raises(ModelNotFoundError, match="version 7"):
        api("infer", "digits_classifier", pixels, version=7)
    assert api("infer", "digits_classifier", pixels, version=1).model_version == "1"


def test_deadline_shorter_than_the_model(api: Api) -> None:
    with pytest.raises(InferenceTimeoutError) as info:
        api("infer", "slow", delay(1500), timeout_s=0.3)
    message = str(info.value)
    assert "0.3 s" in message
    assert "smaller input" in message
    assert "asynchronous API" in message
    # A deadline longer than the model's work succeeds.
    assert api("infer", "slow", delay(10), timeout_s=10)["slept_ms"].tolist() == [[10]]


def test_client_default_timeout_applies(url: str) -> None:
    with Client(url, timeout_s=0.3) as client, pytest.raises(InferenceTimeoutError):
        client.infer("slow", delay(1500))


@pytest.mark.parametrize("style", ["async", "sync"])
def test_full_queue_is_overloaded(url: str, style: str) -> None:
    """``slow`` runs one request and queues at most one more: the rest are refused."""
    requests = 4
    with Client(url, retry=PATIENT) as client:  # earlier HTTP timeouts may still be running
        client.infer("slow", delay(0))

    if style == "async":

        async def burst() -> list[object]:
            async with AsyncClient(url) as client:
                calls = [client.infer("slow", delay(1000), retry=False) for _ in range(requests)]
                return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = asyncio.run(burst())
    else:
        with Client(url) as client, ThreadPoolExecutor(requests) as pool:

            def call(_: int) -> object:
                try:
                    return client.infer("slow", delay(1000), retry=False)
                except MlapiError as exc:
                    return exc

            outcomes = list(pool.map(call, range(requests)))

    refused = [o for o in outcomes if isinstance(o, Exception)]
    assert refused, "no request was refused"
    assert all(isinstance(o, ServerOverloadedError) for o in refused), refused
    assert all(o.retryable for o in refused)
    assert len(refused) < requests
    assert "Exceeds maximum queue size" in str(refused[0])


def test_no_raw_exception_escapes(api: Api) -> None:
    calls = [
        lambda: api("infer", "digits", {"image": IMAGE.astype(np.int64)}),
        lambda: api("infer", "digits", {"wrong_name": IMAGE}),
        lambda: api("infer", "slow", {"delay_ms": np.ones((3, 1), np.int32)}),  # batch too big
        lambda: api("digits", b"not an image"),
        lambda: api("contract", "no_such_model"),
    ]
    for call in calls:
        with pytest.raises(MlapiError):
            call()
    assert_healthy(api)
