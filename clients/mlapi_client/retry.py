"""Retrying an async call: exponential backoff with full jitter, Retry-After, total deadline."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mlapi_client.errors import MlapiError, ModelUnavailableError
from mlapi_client.settings import RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")


def wait_before_retry_s(
    policy: RetryPolicy, retry_number: int, error: MlapiError, rng: random.Random
) -> float:
    """Return the wait before retry ``retry_number``: jittered backoff, >= the server's hint."""
    wait_s = rng.uniform(0.0, policy.backoff_cap_s(retry_number))
    if isinstance(error, ModelUnavailableError) and error.retry_after_s is not None:
        wait_s = max(wait_s, error.retry_after_s)
    return wait_s


async def call_with_retry(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``attempt`` until it succeeds, fails for good, or the next wait would pass the deadline."""
    deadline = clock() + policy.deadline_s
    retry_number = 0
    while True:
        try:
            return await attempt()
        except MlapiError as error:
            retry_number += 1
            if not error.retryable or retry_number >= policy.max_attempts:
                raise
            rng = rng or random.Random()  # seeded from urandom: only paid when retrying
            wait_s = wait_before_retry_s(policy, retry_number, error, rng)
            if clock() + wait_s >= deadline:
                log.info(
                    "not retrying: waiting %.2fs would pass the %.1fs deadline",
                    wait_s,
                    policy.deadline_s,
                )
                raise
            log.info(
                "retry %d in %.2fs after %s: %s", retry_number, wait_s, type(error).__name__, error
            )
            await asyncio.sleep(wait_s)
