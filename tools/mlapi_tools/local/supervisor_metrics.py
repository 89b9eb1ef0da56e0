"""The supervisor's Prometheus metrics, in a registry of its own, optionally served over HTTP."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from mlapi_tools.local.supervisor_settings import SupervisorSettings

log = logging.getLogger("mlapi.supervisor")


class SupervisorMetrics:
    """``mlapi_supervisor_*``: reloads by outcome, deaths by detector, models being healed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reloads = Counter(
            "mlapi_supervisor_reloads",
            "Reloads of a model whose Python stub died, by outcome "
            "(reloaded, failed, timeout, rate_limited, blocked: only a server restart can heal it).",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.stub_deaths = Counter(
            "mlapi_supervisor_stub_deaths",
            "Dead Python stubs found, by model and detector (process, probe).",
            ["model", "detector"],
            registry=self.registry,
        )
        self.healing = Gauge(
            "mlapi_supervisor_healing",
            "1 while the model is being healed (its requests may fail), else 0.",
            ["model"],
            registry=self.registry,
        )
        self.models_healing = Gauge(
            "mlapi_supervisor_models_healing",
            "How many models are being healed now.",
            registry=self.registry,
        )
        self.port: int | None = None
        self._server: WSGIServer | None = None

    @contextlib.contextmanager
    def healing_model(self, model: str) -> Iterator[None]:
        self.healing.labels(model=model).set(1)
        self.models_healing.inc()
        try:
            yield
        finally:
            self.healing.labels(model=model).set(0)
            self.models_healing.dec()

    def serve(self, settings: SupervisorSettings) -> None:
        """Start the /metrics endpoint when ``settings.metrics_port`` is set (0: a free port)."""
        if settings.metrics_port is None or self._server is not None:
            return
        server, _thread = start_http_server(
            settings.metrics_port, settings.metrics_address, registry=self.registry
        )
        self._server = server
        self.port = int(server.server_address[1])
        log.info("supervisor metrics: http://%s:%d/metrics", settings.metrics_address, self.port)

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
