from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from mlapi_backend.errors import InvalidInputError, UnavailableError
from mlapi_backend.triton_responses import respond, send_stream, to_responses


class _Error:
    INVALID_ARG, INTERNAL, UNAVAILABLE = "INVALID_ARG", "INTERNAL", "UNAVAILABLE"

    def __init__(self, message: str, code: str) -> None:
        self.message, self.code = message, code


FAKE_PB_UTILS = SimpleNamespace(
    TritonError=_Error,
    Tensor=lambda name, array: (name, array),
    InferenceResponse=lambda tensors=None, error=None: SimpleNamespace(
        tensors=tensors, error=error
    ),
)


def test_each_result_gets_its_own_response_and_error_code():
    results = [
        {"y": np.ones(2)},
        InvalidInputError("image", "UINT8", "FP32"),
        RuntimeError("classifier down"),
        UnavailableError("digits_classifier version 1 is configured but not ready"),
    ]
    ok, invalid, internal, unavailable = to_responses(results, FAKE_PB_UTILS)
    assert ok.error is None and ok.tensors[0][0] == "y"
    assert (invalid.error.code, invalid.error.message) == (
        "INVALID_ARG",
        "input 'image': expected UINT8, got FP32",
    )
    assert internal.error.code == "INTERNAL" and "classifier down" in internal.error.message
    assert unavailable.error.code == "UNAVAILABLE" and "version 1" in unavailable.error.message


def test_a_shed_decode_step_is_unavailable_and_a_failed_one_internal():
    from mlapi_backend.generation import DecoderError, DecoderUnavailableError
    from mlapi_backend.triton_responses import error_code

    shed = DecoderUnavailableError("text_decoder failed: Request timeout expired")
    assert error_code(shed, FAKE_PB_UTILS) == "UNAVAILABLE"
    assert error_code(DecoderError("text_decoder failed: boom"), FAKE_PB_UTILS) == "INTERNAL"
    assert error_code(InvalidInputError("seed", "an integer >= 0", "-1"), FAKE_PB_UTILS) == (
        "INVALID_ARG"
    )


# --- respond / send_stream: one request's failure never reaches its batch-mates -----------


class _Logger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def log_error(self, message: str) -> None:
        self.lines.append(("error", message))

    def log_warn(self, message: str) -> None:
        self.lines.append(("warn", message))


def _pb_utils() -> SimpleNamespace:
    return SimpleNamespace(
        TritonError=_Error,
        Tensor=_tensor,
        InferenceResponse=lambda tensors=None, error=None: SimpleNamespace(
            tensors=tensors, error=error
        ),
        Logger=_Logger(),
        TRITONSERVER_RESPONSE_COMPLETE_FINAL=1,
    )


def _tensor(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    if array.dtype == np.complex64:  # stands in for what pb_utils.Tensor refuses
        raise TypeError(f"unsupported dtype {array.dtype}")
    return name, array


class _Request:
    def __init__(self, rid: str, value: int) -> None:
        self.rid, self.value = rid, value

    def request_id(self) -> str:
        return self.rid


def _prepare(request: _Request) -> int:
    if request.value == -1:
        return {}["a bug"]  # KeyError
    if request.value == -3:
        raise InvalidInputError("value", "an integer >= 0", "-3")
    if request.value == -4:
        raise UnavailableError("value: the service it needs is not loaded")
    return request.value


def _doubled(prepared):
    return [
        item if isinstance(item, Exception) else {"y": np.array([2 * item])} for item in prepared
    ]


def test_respond_fails_only_the_request_whose_preparation_raised():
    pb = _pb_utils()
    batches: list[list] = []

    def run(prepared):
        batches.append(list(prepared))
        return _doubled(prepared)

    values = {"a": 1, "bug": -1, "b": 2, "invalid": -3, "unavailable": -4, "c": 3}
    requests = [_Request(rid, value) for rid, value in values.items()]
    responses = dict(zip(values, respond(requests, _prepare, run, pb, "m"), strict=True))
    assert len(batches) == 1 and len(batches[0]) == len(values)  # one run, failures in place
    for rid in ("a", "b", "c"):
        assert responses[rid].error is None
        assert responses[rid].tensors[0][1].tolist() == [2 * values[rid]]
    bug = responses["bug"].error
    assert bug.code == "INTERNAL"
    assert "request 'bug'" in bug.message and "KeyError" in bug.message
    assert responses["invalid"].error.code == "INVALID_ARG"
    assert responses["invalid"].error.message == "input 'value': expected an integer >= 0, got -3"
    assert responses["unavailable"].error.code == "UNAVAILABLE"
    # Only the bug is logged, once, with its request id and traceback.
    assert len(pb.Logger.lines) == 1
    level, line = pb.Logger.lines[0]
    assert level == "error" and "request 'bug'" in line
    assert "Traceback" in line and "KeyError: 'a bug'" in line


def test_a_batch_step_that_raises_is_rerun_request_by_request():
    pb = _pb_utils()
    calls: list[int] = []

    def run(prepared):
        calls.append(len(prepared))
        if any(item == 13 for item in prepared):
            raise ZeroDivisionError("a bug that only request 13 provokes")
        return _doubled(prepared)

    requests = [_Request(f"r{i}", v) for i, v in enumerate([1, 13, 2, -3, 4])]
    ok1, bug, ok2, invalid, ok4 = respond(requests, _prepare, run, pb, "m")
    assert calls == [5, 1, 1, 1, 1]  # the batch, then each prepared request alone
    assert [r.tensors[0][1].tolist() for r in (ok1, ok2, ok4)] == [[2], [4], [8]]
    assert bug.error.code == "INTERNAL" and "ZeroDivisionError" in bug.error.message
    assert "request 'r1'" in bug.error.message
    assert invalid.error.code == "INVALID_ARG"
    levels = [level for level, _ in pb.Logger.lines]
    assert levels == ["warn", "error"] and "request 'r1'" in pb.Logger.lines[1][1]


def test_a_batch_step_with_too_few_results_is_rerun_request_by_request():
    pb = _pb_utils()

    def run(prepared):
        return _doubled(prepared)[:1] if len(prepared) > 1 else _doubled(prepared)

    responses = respond([_Request("a", 1), _Request("b", 2)], _prepare, run, pb, "m")
    assert [r.tensors[0][1].tolist() for r in responses] == [[2], [4]]


def test_an_output_the_server_cannot_carry_fails_only_its_request():
    pb = _pb_utils()

    def run(prepared):
        return [
            {"y": np.zeros(1, np.complex64)} if item == 5 else {"y": np.array([item])}
            for item in prepared
        ]

    good, bad = respond([_Request("a", 1), _Request("b", 5)], _prepare, run, pb, "m")
    assert good.error is None
    assert bad.error.code == "INTERNAL" and "TypeError" in bad.error.message


def test_a_request_without_an_id_still_gets_its_error():
    pb = _pb_utils()

    class NoId:
        value = -1

    (response,) = respond([NoId()], _prepare, _doubled, pb, "m")
    assert response.error.code == "INTERNAL" and "request ''" in response.error.message


class _Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[object, int]] = []
        self.closed = False

    def send(self, response=None, flags: int = 0) -> None:
        if self.closed:
            raise RuntimeError("the stream is closed")
        self.sent.append((response, flags))
        self.closed = bool(flags)


async def _chunks(n: int, fail_at: int | None = None, error: Exception | None = None):
    for i in range(n):
        await asyncio.sleep(0)  # interleave with the other streams
        if i == fail_at:
            raise error or KeyError("a bug")
        yield {"text": np.array([str(i).encode()], dtype=np.object_)}, i == n - 1


def test_a_failing_stream_ends_with_an_error_and_the_final_flag_and_others_finish():
    pb = _pb_utils()
    senders = [_Sender() for _ in range(3)]

    async def main() -> None:
        await asyncio.gather(
            send_stream(senders[0], _chunks(4), pb, "gen", "s0"),
            send_stream(senders[1], _chunks(4, fail_at=2), pb, "gen", "s1"),
            send_stream(senders[2], _chunks(4), pb, "gen", "s2"),
        )

    asyncio.run(main())
    for sender in (senders[0], senders[2]):
        assert [flags for _, flags in sender.sent] == [0, 0, 0, 1]
        assert all(response.error is None for response, _ in sender.sent)
    failed = senders[1].sent
    assert [flags for _, flags in failed] == [0, 0, 1]
    assert failed[0][0].error is None and failed[1][0].error is None
    error = failed[2][0].error
    assert error.code == "INTERNAL" and "request 's1'" in error.message
    assert len(pb.Logger.lines) == 1 and "request 's1'" in pb.Logger.lines[0][1]


def test_an_expected_stream_error_keeps_its_code_and_is_not_logged():
    pb = _pb_utils()
    sender = _Sender()
    invalid = InvalidInputError("max_tokens", "an integer in [1, 512]", "0")
    asyncio.run(send_stream(sender, _chunks(3, fail_at=0, error=invalid), pb, "gen", "s"))
    ((response, flags),) = sender.sent
    assert flags == 1 and response.error.code == "INVALID_ARG"
    assert response.error.message == str(invalid)
    assert pb.Logger.lines == []


def test_a_failure_after_the_last_response_is_logged_not_sent():
    pb = _pb_utils()
    sender = _Sender()

    async def chunks():
        yield {"text": np.array([b"done"], dtype=np.object_)}, True
        raise KeyError("counting the finished stream")

    asyncio.run(send_stream(sender, chunks(), pb, "gen", "s"))
    assert [flags for _, flags in sender.sent] == [1]
    assert len(pb.Logger.lines) == 1 and "after its last response" in pb.Logger.lines[0][1]


def test_a_stream_that_ends_without_a_last_chunk_is_closed():
    pb = _pb_utils()
    sender = _Sender()

    async def chunks():
        yield {"text": np.array([b"partial"], dtype=np.object_)}, False

    asyncio.run(send_stream(sender, chunks(), pb, "gen", "s"))
    assert [(r is None, flags) for r, flags in sender.sent] == [(False, 0), (True, 1)]


def test_a_lone_request_keeps_its_own_error_when_the_batch_step_also_raises():
    pb = _pb_utils()

    def run(prepared):
        raise ZeroDivisionError("a bug in the batch step")

    (invalid,) = respond([_Request("a", -3)], _prepare, run, pb, "m")
    assert invalid.error.code == "INVALID_ARG"
    (bug,) = respond([_Request("b", 1)], _prepare, run, pb, "m")
    assert bug.error.code == "INTERNAL" and "ZeroDivisionError" in bug.error.message
