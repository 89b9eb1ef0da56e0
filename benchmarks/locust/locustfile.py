"""locust scenarios for Triton's HTTP endpoint (the request mix lives in mlapi_bench.scenarios).

Headless, fixed duration (what `python -m mlapi_bench locust` runs):
    locust -f benchmarks/locust/locustfile.py --headless -u 16 -r 8 -t 30s \
        --host http://127.0.0.1:8000 --csv benchmarks/results/locust

Bad requests are reported under names starting "expected 4xx:" and count as successes when
Triton answers them with a 4xx; failures are only unexpected answers.
"""

from __future__ import annotations

import itertools

from locust import HttpUser, between, task

from mlapi_bench.scenarios import default_mix

_SEEDS = itertools.count()


class TritonHttpUser(HttpUser):
    """A client of the public models over Triton's KServe v2 HTTP API."""

    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        self.mix = default_mix(seed=next(_SEEDS))

    @task
    def call(self) -> None:
        call = self.mix.next_call()
        with self.client.post(
            call.path, json=call.body, name=call.name, catch_response=True
        ) as reply:
            problem = call.verdict(reply.status_code)
            if problem is None:
                reply.success()
            else:
                reply.failure(problem)
