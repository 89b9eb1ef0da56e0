"""Crash-loop protection and the sidecar form of the supervisor, on a Triton of their own
(a model whose reload is still pending after a crash under load cannot be reloaded again)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlapi_client.errors import ModelCrashedError
from mlapi_tools.local.healing import reload_config
from mlapi_tools.local.triton_process import Ports

from ..conftest import ROOT
from .conftest import (
    IMAGE,
    RECOVERY_BOUND_S,
    RELOADS,
    kill_stub,
    live_config,
    metrics_text,
    sample,
    serves,
    wait_until,
)


def test_a_stub_that_keeps_dying_is_not_reloaded_past_the_limit(
    own_triton, start_supervisor, raw_client
):
    supervisor = start_supervisor(probe_interval_s=0, max_reloads=2, initial_backoff_s=0.2)
    for heal in (1, 2):
        kill_stub(own_triton, "digits")
        wait_until(
            lambda n=heal: sample(supervisor, RELOADS, model="digits", outcome="reloaded") == n,
            RECOVERY_BOUND_S,
            f"reload {heal}",
        )
        wait_until(lambda: serves(raw_client), RECOVERY_BOUND_S, "digits to serve")
    kill_stub(own_triton, "digits")
    wait_until(
        lambda: sample(supervisor, RELOADS, model="digits", outcome="rate_limited") == 1,
        RECOVERY_BOUND_S,
        "the crash-loop guard",
    )
    assert sample(supervisor, RELOADS, model="digits", outcome="reloaded") == 2
    with pytest.raises(ModelCrashedError):
        raw_client.digits(IMAGE, retry=False)
    # Leave the server as the next test expects it (the limiter would not, by design).
    raw_client.load_model("digits", reload_config(live_config(own_triton, "digits")))
    wait_until(lambda: serves(raw_client), RECOVERY_BOUND_S, "digits after a manual reload")


def test_the_sidecar_finds_a_dead_stub_by_probes_and_reports_it_on_its_metrics_port(
    own_triton, raw_client, tmp_path
):
    """`supervise --triton-url` alone, without the process watch (a pod without a shared
    process namespace): the periodic probe finds the dead stub."""
    port = Ports.free().http
    command = [sys.executable, "-m", "mlapi_tools.local", "supervise",
               "--triton-url", f"http://{own_triton.http_url}", "--metrics-port", str(port)]  # fmt: skip
    env = {"MLAPI_SUPERVISOR_WATCH_PROCESSES": "false", "MLAPI_SUPERVISOR_PROBE_INTERVAL_S": "0.5"}
    log_path = tmp_path / "supervise.log"
    with log_path.open("wb") as log:
        sidecar = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: "mlapi_supervisor_models_healing" in metrics_text(port), 60, "metrics")
        kill_stub(own_triton, "digits")
        wait_until(
            lambda: (
                'mlapi_supervisor_reloads_total{model="digits",outcome="reloaded"} 1.0'
                in metrics_text(port)
            ),
            RECOVERY_BOUND_S,
            "the sidecar's reload",
        )
        assert 'stub_deaths_total{detector="probe",model="digits"} 1.0' in metrics_text(port)
        assert serves(raw_client)
        sidecar.terminate()
        assert sidecar.wait(timeout=30) == 0, log_path.read_text()[-2000:]
        assert "detectors: probe" in log_path.read_text()
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
