"""Prometheus metrics of the gateway, and the ASGI middleware that records every request.

With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` makes /metrics add up all workers
(``python -m mlapi_gateway`` sets it up).
"""

from __future__ import annotations

import asyncio
import os
import time
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
ERRORS = Counter("mlapi_gateway_errors_total", "Error responses by type", ("type",))
JOBS = Counter("mlapi_gateway_jobs_total", "Async jobs that reached a final state", ("status",))
WEBHOOKS = Counter("mlapi_gateway_webhooks_total", "Webhook deliveries", ("outcome",))
CLIENT_CLOSED = 499  # the caller went away before its answer (nginx's code)


def count_error(error_type: str) -> None:
    """Count one error answer of ``error_type``."""
    ERRORS.labels(error_type).inc()


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

    def __init__(self, app: ASGIApp, models: list[str] | tuple[str, ...] = ()) -> None:
        self.app = app
        self.models = frozenset(models)
        # The counter and histogram children of each label set, looked up once (labels()
        # takes a lock and checks its arguments every call); the labels are bounded.
        self._children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}

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
            route = scope.get("route")
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
            children[1].observe(time.perf_counter() - start)

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
