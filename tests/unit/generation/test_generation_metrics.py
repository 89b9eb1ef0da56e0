"""Per-stream timing: time to first token, mean inter-token gap, length (pure logic)."""

from __future__ import annotations

import itertools

from mlapi_backend.generation_metrics import StreamTiming


def clock(*times: float):
    ticks = itertools.chain(times)
    return lambda: next(ticks)


def test_first_token_time_and_mean_gap_of_a_stream() -> None:
    timing = StreamTiming(clock(10.0, 10.5, 10.6, 10.9))  # start, then three responses
    for _ in range(3):
        timing.sent()
    summary = timing.summary(completion_tokens=4)  # the last response carried two tokens
    assert summary.time_to_first_token_s == 0.5
    assert abs(summary.inter_token_s - 0.4 / 3) < 1e-12
    assert summary.completion_tokens == 4


def test_short_and_empty_streams_have_no_gap_and_no_first_token() -> None:
    one = StreamTiming(clock(1.0, 1.25))
    one.sent()
    assert one.summary(1).inter_token_s is None and one.summary(1).time_to_first_token_s == 0.25
    none = StreamTiming(clock(1.0))
    assert none.summary(0).time_to_first_token_s is None and none.summary(0).inter_token_s is None
