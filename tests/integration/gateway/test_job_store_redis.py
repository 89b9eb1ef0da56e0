"""The job store contract (tests/unit/gateway/test_job_store.py) against the Redis store."""

from __future__ import annotations

import pytest

from mlapi_gateway.jobs.redis_store import RedisJobStore
from tests.unit.gateway.test_job_store import (  # noqa: F401 (collected here with Redis)
    MakeStore,
    test_cancel_and_expiry,
    test_cancel_stops_a_running_claim,
    test_each_claim_has_its_own_lease,
    test_expired_lease_is_taken_over_and_resumes,
    test_lifecycle_and_exactly_once_finish,
    test_release_puts_the_job_back_with_its_progress,
)

from .harness import RedisServer


@pytest.fixture
def make_store(redis_server: RedisServer) -> MakeStore:
    return lambda result_ttl_s, lease_s: RedisJobStore(redis_server.url, result_ttl_s, lease_s)
