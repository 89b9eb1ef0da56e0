"""A hypothesis fuzzer against Triton's HTTP and gRPC inputs for every public model, on a server
of its own: well-formed protocol requests with arbitrary tensor names, data types, shapes that
match the data sent (zero-size and large-but-bounded included), values and request parameters.
Every answer must be a success or a client error (400 / INVALID_ARGUMENT), never a 5xx, an
INTERNAL or a hang; afterwards the server is live and a held-out digit is answered correctly.

Out of scope (protocol-level crash classes of Triton itself, kept away by keeping untrusted
callers off Triton): declared shapes that disagree with the bytes sent, deeply nested JSON,
``classification`` output parameters, compressed bodies.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlapi_client import Client
from mlapi_client.errors import (
    InvalidInputError,
    MlapiError,
    ModelNotFoundError,
    UnsupportedRequestError,
)
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton

from ..conftest import PUBLIC_MODELS

CASE_BOUND_S = 30.0  # one request's answer (or a whole stream, max_tokens <= 1024) within this
MAX_BYTES = 2 << 20  # large but bounded tensors
CLIENT_ERRORS = (InvalidInputError, ModelNotFoundError, UnsupportedRequestError)
DTYPES = [
    np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32,
    np.int64, np.float16, np.float32, np.float64, np.object_,
]  # fmt: skip
NAMES = {
    "digits": ["image", "top_k"],
    "digits_classifier": ["pixels"],
    "text_generator": [
        "text_input", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
    ],
}  # fmt: skip
PARAMETER_KEYS = [
    "model_version", "routing_key", "top_k", "traffic_policy", "shadow", "max_tokens",
    "temperature", "seed", "stop", "timeout", "priority",
]  # fmt: skip
# Names without control characters: over HTTP a NUL in a parameter key truncates it in Triton's
# JSON reader, which then answers 500 "parameter key '' was not found" (a front-end finding).
NAME_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
IMAGE_ONE = np.zeros((1, 8, 8), dtype=np.uint8)
IMAGE_ONE[0, 1:7, 3:5] = 255
FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same cases on every run, for CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with own_triton(
        tmp_path_factory.mktemp("fuzz_triton"), models=(*PUBLIC_MODELS, "text_generator")
    ) as triton:
        yield triton


@st.composite
def tensors(draw: st.DrawFn, model: str) -> tuple[str, np.ndarray]:
    """One tensor: a known or arbitrary name, any data type, a shape its data matches."""
    name = draw(st.sampled_from(NAMES[model]) | NAME_TEXT)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rank = draw(st.integers(0, 4))
    item = 8 if dtype == np.object_ else dtype.itemsize
    dims = draw(
        st.lists(
            st.sampled_from([0, 1, 2, 3, 8, 9, 64, 65, 300, 1025]), min_size=rank, max_size=rank
        )
    )
    while int(np.prod(dims, dtype=np.int64)) * item > MAX_BYTES:
        dims[int(np.argmax(dims))] //= 2
    size = int(np.prod(dims, dtype=np.int64))
    if dtype == np.object_:
        pool = draw(
            st.lists(
                st.binary(max_size=40) | st.text(max_size=20).map(str.encode),
                min_size=1,
                max_size=4,
            )
        )
        data = np.array([pool[i % len(pool)] for i in range(size)], dtype=np.object_)
    else:
        fill = draw(st.sampled_from(["zeros", "ones", "random", "max", "min", "special"]))
        data = _filled(dtype, size, fill, draw(st.integers(0, 2**32 - 1)))
    return name, data.reshape(dims)


def _filled(dtype: np.dtype, size: int, fill: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.integers(0, 2, size).astype(np.bool_)
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    if fill == "special" and dtype.kind == "f":
        return rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0, info.tiny], dtype=dtype), size)
    value = {"zeros": 0, "ones": 1, "max": info.max, "min": info.min}.get(fill)
    if value is not None:
        return np.full(size, value, dtype=dtype)
    if dtype.kind == "f":
        return rng.normal(0, 100, size).astype(dtype)
    return rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)


PARAMETER_VALUES = (
    st.integers(-(2**63), 2**63 - 1)
    | st.booleans()
    | st.text(max_size=300)
    | st.sampled_from(["1", "2", "9", "0", "-1", "1.5", "", " 2", "\uff11"])
)


# A valid request per model; half the cases start from it and change a part, so that cases
# reach the model's own code and not only Triton's type and shape checks.
VALID = {
    "digits": {"image": IMAGE_ONE, "top_k": np.array([[3]], dtype=np.int32)},
    # 784 pixels: a request without a version goes to version 3 (28x28 frames).
    "digits_classifier": {"pixels": np.zeros((1, 784), dtype=np.float32)},
    "text_generator": {
        "text_input": np.array([b"The "], dtype=np.object_),
        "max_tokens": np.array([4], dtype=np.int32),
    },
}
# Triton reads these itself, as unsigned integers: over HTTP any other JSON value is a 500 from
# Triton's own front end (found by this fuzzer; the gateway never forwards them), so they are
# sent only as well-formed values.
RESERVED_PARAMETERS = ("timeout", "priority")


@st.composite
def requests(draw: st.DrawFn, model: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    changed = dict(draw(st.lists(tensors(model), max_size=len(NAMES[model]) + 1)))
    if draw(st.booleans()):
        inputs = {**VALID[model], **dict(list(changed.items())[:1])}
        for name in draw(st.lists(st.sampled_from(sorted(inputs)), max_size=1)):
            del inputs[name]
    else:
        inputs = changed
    keys = st.sampled_from(PARAMETER_KEYS) | NAME_TEXT
    parameters = draw(st.dictionaries(keys, PARAMETER_VALUES, max_size=4))
    for key in RESERVED_PARAMETERS:
        if key in parameters:
            parameters[key] = draw(st.integers(0, 2**63 - 1))
    return inputs, parameters


def _verdict(call: Any) -> str:
    """'ok' or the client-error class; any other failure fails the test."""
    started = time.monotonic()
    try:
        call()
        outcome = "ok"
    except CLIENT_ERRORS as exc:
        outcome = type(exc).__name__
    except MlapiError as exc:
        pytest.fail(f"server-side failure {type(exc).__name__} ({exc.status}): {exc.message}")
    elapsed = time.monotonic() - started
    assert elapsed < CASE_BOUND_S, f"answer took {elapsed:.1f}s"
    return outcome


def _fuzz(server: TritonServer, protocol: str, model: str, report_figure) -> None:
    url = f"{protocol}://{server.http_url if protocol == 'http' else server.grpc_url}"
    outcomes: Counter[str] = Counter()
    with Client(url, timeout_s=CASE_BOUND_S, retry=None) as client:

        def infer(inputs: dict, parameters: dict) -> None:
            client.infer(model, inputs, parameters=parameters or None, retry=False)

        def stream(inputs: dict, parameters: dict) -> None:
            # Read to the end: closing the sync Client's stream early raised CancelledError.
            for _ in client.stream(model, inputs, parameters=parameters or None, retry=False):
                pass

        send = stream if model == "text_generator" else infer

        @FUZZ_SETTINGS
        @given(request=requests(model))
        def case(request: tuple[dict[str, np.ndarray], dict[str, Any]]) -> None:
            inputs, parameters = request
            outcomes[_verdict(lambda: send(inputs, parameters))] += 1

        started = time.monotonic()
        case()
        elapsed = time.monotonic() - started
        assert server.process is not None and server.process.poll() is None, "server died"
        assert client.is_live()
    report_figure(
        f"fuzz {model} over {protocol}",
        f"{sum(outcomes.values())} cases in {elapsed:.1f}s: {dict(outcomes)}",
    )


@pytest.mark.parametrize(
    ("model", "protocol"),
    [
        ("digits", "http"),
        ("digits", "grpc"),
        ("digits_classifier", "http"),
        ("digits_classifier", "grpc"),
        # Over HTTP text_generator is reached through Triton's JSON generate endpoint, which
        # answers 500 for JSON values it cannot convert to the input's type (e.g. a negative
        # INT64 in "parameters", numbers for a BYTES input): a Triton front-end limit, not the
        # model's; untrusted callers reach it only through the gateway's validated schema.
        ("text_generator", "grpc"),
    ],
)
def test_fuzzed_inputs_never_get_a_server_error(server, protocol, model, report_figure):
    _fuzz(server, protocol, model, report_figure)


def test_after_fuzzing_the_server_is_live_and_a_held_out_digit_is_right(server, split):
    assert server.process is not None and server.process.poll() is None
    with Client(server.http_url) as client:
        assert client.is_live() and client.is_ready("digits")
        image, label = split.test_images[0], split.test_y[0]
        assert client.digits(image).label == str(label)
        assert client.digits(IMAGE_ONE[0], top_k=1).label == "1"
