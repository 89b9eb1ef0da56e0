"""Prometheus metrics of the gateway, and the ASGI middleware that records every request.

With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` makes /metrics add up all workers
(``python -m mlapi_gateway`` sets it up).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LABELS = ("route", "model", "version", "status_class")
REQUESTS = Counter("mlapi_gateway_requests_total", "Requests answered by the gateway", LABELS)
LATENCY = Histogram(
    "mlapi_gateway_request_duration_seconds",
    "Time from request to the start of the response",
    LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICT_BUCKETS_S = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015,
                     0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5,
                     10, 30)  # fmt: skip
# Served predictions of the predict routes (2xx), fine enough for histogram_quantile to read
# p50/p95/p99 from 0.5 ms to 30 s, by model, served version, the protocol of the gateway's
# calls to Triton and a bucket of the request body's size. Errors are in ERRORS.
PREDICT_LATENCY = Histogram(
    "mlapi_gateway_predict_duration_seconds",
    "Served predictions: time from request to the start of the response",
    ("model", "version", "protocol", "input_size"),
    buckets=PREDICT_BUCKETS_S,
)
PREDICT_ROUTES = frozenset(
    ("/v1/models/{model}/predict", "/v1/models/{model}/versions/{version}/predict")
)
# Upper bounds (bytes) of the input_size label's buckets; larger bodies are "gt_1MiB".
INPUT_SIZE_BUCKETS = ((1024, "le_1KiB"), (16_384, "le_16KiB"), (262_144, "le_256KiB"),
                      (1_048_576, "le_1MiB"))  # fmt: skip
# type: what went wrong (validation, auth, rate_limit, timeout, unavailable, model_error,
# cancelled, ...: errors.GatewayError.error_type); status_class: 4xx or 5xx as answered.
ERRORS = Counter(
    "mlapi_gateway_errors_total",
    "Error responses by type and status class",
    ("type", "status_class"),
)
JOBS = Counter("mlapi_gateway_jobs_total", "Async jobs that reached a final state", ("status",))
WEBHOOKS = Counter("mlapi_gateway_webhooks_total", "Webhook deliveries", ("outcome",))
CLIENT_CLOSED = 499  # the caller went away before its answer (nginx's code)
# Estimated cost of served predictions, from the cost the model put in its answer's metadata
# (docs/observability.md#cost-per-request), per model, served version and API key: the key's
# id (ids come from the keys file, so the label is bounded), "open" for every caller in open
# mode (whose ids name client addresses).
COST = Counter(
    "mlapi_gateway_cost_usd_total",
    "Estimated cost of served predictions in USD, from the models' metadata",
    ("model", "version", "key"),
)
COST_HEADER = "X-Cost-USD"
OPEN_KEY_PREFIX = "open:"


def count_error(error_type: str, status: int) -> None:
    """Count one error answer of ``error_type`` sent (or that would be sent) with ``status``."""
    ERRORS.labels(error_type, f"{status // 100}xx").inc()


def answer_cost_usd(answer: Mapping[str, Any]) -> float | None:
    """Return the cost in USD that a predict answer's metadata reports (None: it reports none).

    A cache hit ran no model: its cost is 0, whatever the cached metadata says.
    """
    metadata = answer.get("metadata")
    cost = metadata.get("cost") if isinstance(metadata, Mapping) else None
    usd = cost.get("usd") if isinstance(cost, Mapping) else None
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not 0 <= usd < math.inf:
        return None
    cache = answer.get("cache")
    if isinstance(cache, Mapping) and cache.get("hit"):
        return 0.0
    return float(usd)


def cost_key_label(key_id: str) -> str:
    """Return the ``key`` label of a caller: its key id, or ``open`` in open mode."""
    return "open" if key_id.startswith(OPEN_KEY_PREFIX) else key_id


@lru_cache(maxsize=4096)  # the labels are bounded: known models, served versions, key ids
def _cost_child(model: str, version: str, key: str) -> Any:
    return COST.labels(model, version, key)


def count_cost(answer: Mapping[str, Any], model: str, version: str, key_id: str) -> str | None:
    """Count a served answer's cost and return its ``X-Cost-USD`` value (None: no cost known).

    ``model`` must be a known model and ``version`` the one Triton served (bounded labels).
    """
    usd = answer_cost_usd(answer)
    if usd is None:
        return None
    _cost_child(model, version, cost_key_label(key_id)).inc(usd)
    return f"{usd:.6g}"


def input_size_bucket(size_bytes: int) -> str:
    """Return the ``input_size`` label of a request body of ``size_bytes``."""
    for bound, label in INPUT_SIZE_BUCKETS:
        if size_bytes <= bound:
            return label
    return "gt_1MiB"


def exposition() -> tuple[bytes, str]:
    """Return the metrics text and its content type (all workers' under multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # unannotated upstream
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request by route template, model, served version and status.

    Every label is bounded whatever callers send: the route is the matched template (else
    ``unmatched``), the model one of ``models`` (else empty: handlers name it only once the
    caller is authenticated and the model exposed), the version one Triton served. A caller
    that disconnects before its answer counts as 499 (``cancelled``), not as a 500.
    """

    def __init__(
        self, app: ASGIApp, models: list[str] | tuple[str, ...] = (), protocol: str = "http"
    ) -> None:
        self.app = app
        self.models = frozenset(models)
        self.protocol = protocol
        # The counter and histogram children of each label set, looked up once (labels()
        # takes a lock and checks its arguments every call); the labels are bounded.
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._predict_children: dict[tuple[str, str, str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            self.observe(scope.get("route"), state, status, time.perf_counter() - start)

        async def send_recorded(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                record()
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            record()

    def observe(self, route: Any, state: dict[str, Any], status: int, elapsed_s: float) -> None:
        """Count and time one answer of ``route`` (None: unmatched) with ``status``.

        ``state`` is the request's: the model, the served version and the body size the
        handlers left there. The predict shortcut (mlapi_gateway.fastpath) records through
        this method too, so both paths give the same samples.
        """
        model = state.get("model", "")
        labels = (
            getattr(route, "path", "unmatched"),
            model if model in self.models else "",
            state.get("model_version", "") if model in self.models else "",
            f"{status // 100}xx",
        )
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = (
                REQUESTS.labels(*labels),
                LATENCY.labels(*labels),
            )
        children[0].inc()
        children[1].observe(elapsed_s)
        if labels[0] in PREDICT_ROUTES and 200 <= status < 300 and labels[1]:
            size = input_size_bucket(int(state.get("body_bytes", 0)))
            served = (labels[1], labels[2], self.protocol, size)
            histogram = self._predict_children.get(served)
            if histogram is None:
                histogram = self._predict_children[served] = PREDICT_LATENCY.labels(*served)
            histogram.observe(elapsed_s)
