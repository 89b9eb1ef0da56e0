from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from mlapi_backend.errors import InvalidInputError, UnavailableError
from mlapi_backend.failure_log import FailureLog
from mlapi_backend.triton_responses import respond, send_stream
from tests.unit.backend import fake_triton

FAKE_PB_UTILS = fake_triton.pb_utils()


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


_Request = fake_triton.Request


def _pb_utils() -> SimpleNamespace:
    return fake_triton.pb_utils()


def _log(pb: SimpleNamespace, model: str = "m", **kwargs) -> FailureLog:
    return FailureLog(pb.Logger, model, **kwargs)


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
    responses = dict(zip(values, respond(requests, _prepare, run, pb, _log(pb)), strict=True))
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
    ok1, bug, ok2, invalid, ok4 = respond(requests, _prepare, run, pb, _log(pb))
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

    responses = respond([_Request("a", 1), _Request("b", 2)], _prepare, run, pb, _log(pb))
    assert [r.tensors[0][1].tolist() for r in responses] == [[2], [4]]


def test_an_output_the_server_cannot_carry_fails_only_its_request():
    pb = _pb_utils()

    def run(prepared):
        return [
            {"y": np.zeros(1, np.complex64)} if item == 5 else {"y": np.array([item])}
            for item in prepared
        ]

    good, bad = respond([_Request("a", 1), _Request("b", 5)], _prepare, run, pb, _log(pb))
    assert good.error is None
    assert bad.error.code == "INTERNAL" and "TypeError" in bad.error.message


def test_a_request_without_an_id_still_gets_its_error():
    pb = _pb_utils()

    class NoId:
        value = -1

    (response,) = respond([NoId()], _prepare, _doubled, pb, _log(pb))
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
    log = _log(pb, "gen")
    senders = [_Sender() for _ in range(3)]

    async def main() -> None:
        await asyncio.gather(
            send_stream(senders[0], _chunks(4), pb, log, "s0"),
            send_stream(senders[1], _chunks(4, fail_at=2), pb, log, "s1"),
            send_stream(senders[2], _chunks(4), pb, log, "s2"),
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
    asyncio.run(send_stream(sender, _chunks(3, fail_at=0, error=invalid), pb, _log(pb, "gen"), "s"))
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

    asyncio.run(send_stream(sender, chunks(), pb, _log(pb, "gen"), "s"))
    assert [flags for _, flags in sender.sent] == [1]
    assert len(pb.Logger.lines) == 1 and "after its last response" in pb.Logger.lines[0][1]


def test_a_stream_that_ends_without_a_last_chunk_is_closed():
    pb = _pb_utils()
    sender = _Sender()

    async def chunks():
        yield {"text": np.array([b"partial"], dtype=np.object_)}, False

    asyncio.run(send_stream(sender, chunks(), pb, _log(pb, "gen"), "s"))
    assert [(r is None, flags) for r, flags in sender.sent] == [(False, 0), (True, 1)]


def test_a_lone_request_keeps_its_own_error_when_the_batch_step_also_raises():
    pb = _pb_utils()

    def run(prepared):
        raise ZeroDivisionError("a bug in the batch step")

    (invalid,) = respond([_Request("a", -3)], _prepare, run, pb, _log(pb))
    assert invalid.error.code == "INVALID_ARG"
    (bug,) = respond([_Request("b", 1)], _prepare, run, pb, _log(pb))
    assert bug.error.code == "INTERNAL" and "ZeroDivisionError" in bug.error.message


# --- a systematic fault: bounded reruns, bounded log --------------------------------------


def test_a_batch_step_that_always_raises_is_not_rerun_for_every_request():
    pb = _pb_utils()
    calls: list[int] = []

    def run(prepared):
        calls.append(len(prepared))
        raise ConnectionError("the dependency is down")

    requests = [_Request(f"r{i}", i + 1) for i in range(8)]
    responses = respond(requests, _prepare, run, pb, _log(pb))
    # The batch, its first request alone, then the other seven together: not 8 more runs.
    assert calls == [8, 1, 7]
    for index, response in enumerate(responses):
        assert response.error.code == "INTERNAL"
        assert "ConnectionError: the dependency is down" in response.error.message
        assert f"request 'r{index}'" in response.error.message
    levels = [level for level, _ in pb.Logger.lines]
    assert levels == ["warn", "warn", "error"]  # one traceback for eight failures of one kind
    assert "failing them all without rerunning" in pb.Logger.lines[1][1]


def test_the_request_that_provokes_a_batch_failure_is_found_when_it_comes_first():
    pb = _pb_utils()
    calls: list[int] = []

    def run(prepared):
        calls.append(len(prepared))
        if 13 in prepared:
            raise ZeroDivisionError("a bug that only request 13 provokes")
        return _doubled(prepared)

    requests = [_Request(f"r{i}", v) for i, v in enumerate([13, 1, 2, 3])]
    bug, *served = respond(requests, _prepare, run, pb, _log(pb))
    assert calls == [4, 1, 3]  # the others, run together without it, succeed
    assert bug.error.code == "INTERNAL" and "request 'r0'" in bug.error.message
    assert [r.tensors[0][1].tolist() for r in served] == [[2], [4], [6]]


def test_a_different_failure_without_the_first_request_reruns_the_rest_alone():
    pb = _pb_utils()
    calls: list[int] = []

    def run(prepared):
        calls.append(len(prepared))
        if 13 in prepared:
            raise ZeroDivisionError("provoked by 13")
        if 7 in prepared and len(prepared) > 1:
            raise KeyError("provoked by 7 in company")
        return _doubled(prepared)

    requests = [_Request(f"r{i}", v) for i, v in enumerate([13, 1, 7, 3])]
    bug, one, seven, three = respond(requests, _prepare, run, pb, _log(pb))
    assert calls == [4, 1, 3, 1, 1, 1]
    assert "ZeroDivisionError" in bug.error.message
    assert [r.tensors[0][1].tolist() for r in (one, seven, three)] == [[2], [14], [6]]


def test_repeated_failures_of_one_kind_log_one_traceback_and_then_their_count():
    pb = _pb_utils()
    now = [0.0]
    log = _log(pb, interval_s=60.0, clock=lambda: now[0])
    bugs = [_Request(f"bug{i}", -1) for i in range(5)]
    responses = respond(bugs, _prepare, _doubled, pb, log)
    assert all("KeyError" in r.error.message for r in responses)  # each still gets its error
    assert [level for level, _ in pb.Logger.lines] == ["error"]
    assert "request 'bug0'" in pb.Logger.lines[0][1] and "Traceback" in pb.Logger.lines[0][1]
    # Another kind (a different exception type) is logged at once.
    respond([_Request("other", 0)], _prepare, lambda p: [ValueError("x")], pb, log)
    assert len(pb.Logger.lines) == 2 and "request 'other'" in pb.Logger.lines[1][1]
    now[0] = 59.0
    respond([_Request("bug5", -1)], _prepare, _doubled, pb, log)
    assert len(pb.Logger.lines) == 2  # still inside the interval: counted only
    now[0] = 61.0
    respond([_Request("fine", 1)], _prepare, _doubled, pb, log)  # any later call reports
    level, count = pb.Logger.lines[2]
    assert level == "error" and "5 more of the same" in count and "KeyError" in count
    assert len(pb.Logger.lines) == 3  # the ValueError had no repeats to report
    respond([_Request("bug6", -1)], _prepare, _doubled, pb, log)  # a new interval
    assert "request 'bug6'" in pb.Logger.lines[3][1] and "Traceback" in pb.Logger.lines[3][1]


def test_the_same_type_raised_at_another_place_gets_its_own_traceback():
    pb = _pb_utils()
    log = _log(pb)

    def run(prepared):
        return [KeyError("in run") if item == 2 else item for item in prepared]

    def raised_here(prepared):
        try:
            {}["raised in run"]
        except KeyError as exc:
            return [exc for _ in prepared]

    respond([_Request("a", -1)], _prepare, run, pb, log)  # KeyError raised in _prepare
    respond([_Request("b", 1)], _prepare, raised_here, pb, log)  # KeyError raised elsewhere
    respond([_Request("c", 2)], _prepare, run, pb, log)  # never raised: a place of its own
    assert [line.split("\n")[0] for _, line in pb.Logger.lines] == [
        "m: request 'a' failed:",
        "m: request 'b' failed:",
        "m: request 'c' failed:",
    ]


# --- send_stream: the final flag is delivered or reported, the generator always closed -----


class _FlakySender(_Sender):
    """Refuses the first send whose flags equal ``refuse_flags``."""

    def __init__(self, refuse_flags: int) -> None:
        super().__init__()
        self.refuse_flags = refuse_flags

    def send(self, response=None, flags: int = 0) -> None:
        if flags == self.refuse_flags and self.refuse_flags is not None:
            self.refuse_flags = None
            raise RuntimeError("the response could not be sent")
        super().send(response, flags)


def test_a_final_flag_that_could_not_be_sent_is_followed_by_an_error_with_it():
    pb = _pb_utils()
    sender = _FlakySender(refuse_flags=1)

    async def chunks():
        yield {"text": np.array([b"partial"], dtype=np.object_)}, False

    asyncio.run(send_stream(sender, chunks(), pb, _log(pb, "gen"), "s"))
    (first, _), (error, flags) = sender.sent
    assert first.error is None
    assert flags == 1 and error.error.code == "INTERNAL" and "RuntimeError" in error.error.message
    assert not any("after its last response" in line for _, line in pb.Logger.lines)
    assert "request 's' failed" in pb.Logger.lines[0][1]


def test_a_failed_send_closes_the_generator_at_once():
    pb = _pb_utils()
    sender = _FlakySender(refuse_flags=0)
    closed: list[bool] = []

    async def chunks():
        try:
            for i in range(3):
                yield {"text": np.array([str(i).encode()], dtype=np.object_)}, i == 2
        finally:
            closed.append(True)

    async def main() -> list[bool]:
        await send_stream(sender, chunks(), pb, _log(pb, "gen"), "s")
        return list(closed)  # before asyncio.run finalizes leftover generators

    assert asyncio.run(main()) == [True]
    ((error, flags),) = sender.sent
    assert flags == 1 and error.error.code == "INTERNAL"


def test_a_cancelled_stream_gets_the_final_flag_with_an_error_and_stays_cancelled():
    pb = _pb_utils()
    sender = _Sender()
    closed: list[bool] = []

    async def main() -> None:
        first_sent = asyncio.Event()
        never = asyncio.Event()

        async def chunks():
            try:
                yield {"text": np.array([b"one"], dtype=np.object_)}, False
                first_sent.set()
                await never.wait()
                yield {"text": np.array([b"two"], dtype=np.object_)}, True
            finally:
                closed.append(True)

        task = asyncio.create_task(send_stream(sender, chunks(), pb, _log(pb, "gen"), "s"))
        await first_sent.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return
        raise AssertionError("the cancellation was swallowed")

    asyncio.run(main())
    (first, _), (cancelled, flags) = sender.sent
    assert first.error is None
    assert flags == 1 and cancelled.error.code == "CANCELLED"
    assert "request 's' was cancelled" in cancelled.error.message
    assert closed == [True]
    assert pb.Logger.lines == []  # a cancellation is not a bug


def test_a_cancelled_stream_whose_sender_is_closed_logs_that_it_cannot_send():
    pb = _pb_utils()
    sender = _Sender()

    async def main() -> None:
        async def chunks():
            yield {"text": np.array([b"one"], dtype=np.object_)}, False
            sender.closed = True  # the server closed the stream meanwhile
            raise asyncio.CancelledError

        try:
            await send_stream(sender, chunks(), pb, _log(pb, "gen"), "s")
        except asyncio.CancelledError:
            return
        raise AssertionError("the cancellation was swallowed")

    asyncio.run(main())
    assert [flags for _, flags in sender.sent] == [0]
    ((level, line),) = pb.Logger.lines
    assert level == "error" and "request 's' cannot send its error" in line
