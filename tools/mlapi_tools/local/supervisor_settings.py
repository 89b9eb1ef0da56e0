"""The supervisor's settings: one typed object, read from ``MLAPI_SUPERVISOR_*`` variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "MLAPI_SUPERVISOR_"


@dataclass(frozen=True)
class SupervisorSettings:
    """How the supervisor finds Triton, how fast it looks, and how often it may reload.

    Each field is read from ``MLAPI_SUPERVISOR_<FIELD>`` (e.g. ``MLAPI_SUPERVISOR_METRICS_PORT``);
    an empty ``METRICS_PORT`` leaves the Prometheus endpoint off.
    """

    # Triton's endpoint; the supervisor sends the access key (mlapi_client.access). gRPC, not
    # HTTP: Triton 2.51's HTTP frontend runs a repository load on one of its worker threads,
    # and replies due on the connections that thread serves wait until the load returns (a
    # heal's load of digits takes ~3 s while its dead instances are finalized, 1 s each: an
    # error reply ready after 1.0 s reached its caller after 3.1 s). A gRPC load holds no
    # inference reply.
    triton_url: str = "grpc://127.0.0.1:8001"
    # Prometheus endpoint for mlapi_supervisor_* metrics: off when None, any free port when 0.
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    # Watch the server's stub processes in /proc (same host, or a sidecar sharing the pod's
    # process namespace). Falls back to probes alone when no tritonserver process is visible.
    watch_processes: bool = True
    # 0.1 s: a /proc scan costs ~2 ms of CPU on this host; detection then takes <= 0.1 s.
    stub_poll_interval_s: float = 0.1
    # Synthetic inference of every ready model version this often (0: never): the portable
    # detector, and the only one when the processes are not visible.
    probe_interval_s: float = 5.0
    probe_timeout_s: float = 5.0
    # Give up on one reload (outcome "timeout") when the model still does not answer after this.
    heal_timeout_s: float = 60.0
    # A load may wait for requests stuck on the dead stub (streams); healing does not wait for it.
    load_timeout_s: float = 300.0
    # Crash-loop guard (healing.ReloadLimiter): at most max_reloads per model per window_s,
    # the n-th within the window initial_backoff_s * 2**(n-2) after the previous one.
    max_reloads: int = 3
    window_s: float = 300.0
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_reloads < 1:
            raise ValueError("max_reloads must be >= 1")
        for name in ("stub_poll_interval_s", "probe_timeout_s", "heal_timeout_s", "window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.probe_interval_s < 0 or self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("intervals and backoffs must not be negative")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> SupervisorSettings:
        """Defaults, then ``MLAPI_SUPERVISOR_*`` variables, then ``overrides`` (e.g. CLI flags).

        Without ``MLAPI_SUPERVISOR_TRITON_URL`` the URL follows ``TRITON_GRPC_PORT``.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "TRITON_GRPC_PORT" in environ:
            values["triton_url"] = f"grpc://127.0.0.1:{environ['TRITON_GRPC_PORT']}"
        for spec in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + spec.name.upper())
            if raw is not None:
                values[spec.name] = _parse(spec.name, str(spec.type), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, kind: str, raw: str) -> Any:
    raw = raw.strip()
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind == "int | None":
            return int(raw) if raw else None
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r}: expected {kind.replace(' | None', ' or empty')}"
        ) from exc
    return raw
