"""Backoff, jitter, Retry-After and the total deadline (pure logic; a fake clock, no sleeping)."""

from __future__ import annotations

import asyncio
import random

import pytest

from mlapi_client import retry as retry_module
from mlapi_client.errors import (
    ConnectionFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    MlapiError,
    ModelUnavailableError,
    ServerOverloadedError,
)
from mlapi_client.retry import call_with_retry, wait_before_retry_s
from mlapi_client.settings import NO_RETRY, RetryPolicy


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(retry_module.asyncio, "sleep", fake.sleep)
    return fake


def run(attempts: list[MlapiError | str], policy: RetryPolicy, fake: FakeTime) -> tuple[str, int]:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        outcome = attempts[calls]
        calls += 1
        if isinstance(outcome, MlapiError):
            raise outcome
        return outcome

    result = asyncio.run(call_with_retry(attempt, policy, rng=random.Random(0), clock=fake.clock))
    return result, calls


@pytest.mark.parametrize(
    "error",
    [
        ConnectionFailedError("down"),
        ModelUnavailableError("loading"),
        ServerOverloadedError("full"),
    ],
)
def test_retryable_errors_are_retried(error: MlapiError, fake_time: FakeTime) -> None:
    result, calls = run([error, error, "ok"], RetryPolicy(), fake_time)
    assert (result, calls) == ("ok", 3)
    assert len(fake_time.sleeps) == 2


@pytest.mark.parametrize("error", [InvalidInputError("bad"), InferenceTimeoutError("slow")])
def test_other_errors_are_not_retried(error: MlapiError, fake_time: FakeTime) -> None:
    with pytest.raises(type(error)):
        run([error, "ok"], RetryPolicy(), fake_time)
    assert fake_time.sleeps == []


def test_no_retry_policy_fails_on_the_first_error(fake_time: FakeTime) -> None:
    with pytest.raises(ConnectionFailedError):
        run([ConnectionFailedError("down"), "ok"], NO_RETRY, fake_time)


def test_max_attempts(fake_time: FakeTime) -> None:
    errors: list[MlapiError | str] = [ConnectionFailedError("down")] * 10
    with pytest.raises(ConnectionFailedError):
        run(errors, RetryPolicy(max_attempts=4), fake_time)
    assert len(fake_time.sleeps) == 3


def test_deadline_caps_the_total_wait(fake_time: FakeTime) -> None:
    policy = RetryPolicy(
        max_attempts=1000, initial_backoff_s=1.0, max_backoff_s=1.0, deadline_s=5.0
    )
    with pytest.raises(ConnectionFailedError):
        run([ConnectionFailedError("down")] * 1000, policy, fake_time)
    assert sum(fake_time.sleeps) < 5.0


def test_retry_after_longer_than_the_deadline_stops_retrying(fake_time: FakeTime) -> None:
    busy = ModelUnavailableError("busy", retry_after_s=60.0)
    with pytest.raises(ModelUnavailableError):
        run([busy, "ok"], RetryPolicy(deadline_s=10.0), fake_time)
    assert fake_time.sleeps == []


def test_retry_after_is_honoured(fake_time: FakeTime) -> None:
    busy = ModelUnavailableError("busy", retry_after_s=3.0)
    result, _ = run([busy, "ok"], RetryPolicy(initial_backoff_s=0.1), fake_time)
    assert result == "ok"
    assert fake_time.sleeps == [3.0]


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=2.0, max_backoff_s=1.0)
    assert [policy.backoff_cap_s(n) for n in range(1, 6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0]
    )
    rng = random.Random(1)
    waits = [wait_before_retry_s(policy, 4, ConnectionFailedError("x"), rng) for _ in range(200)]
    assert all(0.0 <= w <= 0.8 for w in waits)
    assert len({round(w, 6) for w in waits}) > 150  # jittered, not a constant


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(deadline_s=0)
