"""locust scenarios for Triton's HTTP endpoint and the API gateway (mix: mlapi_bench.scenarios).

Headless, fixed duration (what `python -m mlapi_bench locust` runs):
    locust -f benchmarks/locust/locustfile.py --headless -u 16 -r 8 -t 30s \
        --host http://127.0.0.1:8000 --csv benchmarks/results/locust
The gateway scenario runs when MLAPI_GATEWAY_URL is set (Bearer key in MLAPI_GATEWAY_KEY);
name a class to run only it, e.g. `... GatewayUser`.

``TritonHttpUser`` is a raw-HTTP baseline: locust's own HTTP client posting KServe v2 JSON
straight to Triton (what any HTTP client gets), not the project's client library, which the
mlapi_bench harness measures. ``GatewayUser`` measures the public API.

Bad requests are reported under names starting "expected 4xx:" and count as successes when
answered with a 4xx; failures are only unexpected answers.
"""

from __future__ import annotations

import itertools
import os

from locust import HttpUser, between, task

from mlapi_bench.scenarios import Mix, default_mix, held_out_pool
from mlapi_client import access

_SEEDS = itertools.count()
held_out_pool()  # at import, before locust's -t timer starts: no user loads data in its run


def _send(user: HttpUser, mix: Mix, headers: dict[str, str], base_url: str = "") -> None:
    call = mix.next_call()
    url = base_url + call.path  # absolute for the gateway: --host sets Triton's address only
    with user.client.post(
        url, json=call.body, name=call.name, headers=headers, catch_response=True
    ) as reply:
        problem = call.verdict(reply.status_code)
        if problem is None:
            reply.success()
        else:
            reply.failure(problem)


class TritonHttpUser(HttpUser):
    """Baseline: a raw HTTP client of the public models over Triton's KServe v2 HTTP API."""

    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        self.mix = default_mix(seed=next(_SEEDS))
        self.headers = access.http_headers(access.read_key())  # Triton's access key

    @task
    def call(self) -> None:
        _send(self, self.mix, self.headers)


if os.environ.get("MLAPI_GATEWAY_URL"):

    class GatewayUser(HttpUser):
        """The same traffic through the gateway's /v1 routes."""

        wait_time = between(0.0, 0.02)

        def on_start(self) -> None:
            self.mix = default_mix(seed=next(_SEEDS), gateway=True)
            key = os.environ.get("MLAPI_GATEWAY_KEY", "")
            self.headers = {"Authorization": f"Bearer {key}"} if key else {}

        @task
        def call(self) -> None:
            _send(self, self.mix, self.headers, os.environ["MLAPI_GATEWAY_URL"].rstrip("/"))
