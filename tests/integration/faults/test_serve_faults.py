"""The launcher under faults: a corrupt model version at start-up, tritonserver SIGKILLed under
the gateway. Each test runs `python -m mlapi_tools.local serve` on free ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mlapi_client import Client
from mlapi_client.errors import MlapiError
from mlapi_tools.local import stubs
from mlapi_tools.local.triton_process import Ports

from ..conftest import MODEL_REPOSITORY, ROOT
from ..test_serve import START_BOUND_S, _answers, _process_group_members, _serve, _server_pid
from .conftest import wait_until


def _launch(tmp_path: Path, repository: Path, *flags: str) -> tuple[subprocess.Popen, Ports, Path]:
    ports = Ports.free()
    command, env = _serve(tmp_path, ports, repository, *flags)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        launcher = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    launcher.gateway_port = int(env["GATEWAY_PORT"])  # type: ignore[attr-defined]
    return launcher, ports, log_path


def _kill_stubs(http_port: int, model: str) -> None:
    server = _server_pid(http_port)
    assert server is not None
    victims = [s.pid for s in stubs.list_stubs(server) if s.model == model]
    assert victims, f"no living stub for {model}"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


def _kill_server(http_port: int) -> int:
    pid = _server_pid(http_port)
    assert pid is not None, "no tritonserver on that port"
    os.kill(pid, signal.SIGKILL)
    return pid


def _wait_for_log(launcher: subprocess.Popen, log_path: Path, text: str, after: int = 0) -> None:
    def logged() -> bool:
        assert launcher.poll() is None, log_path.read_text()[-4000:]
        return log_path.read_text().count(text) > after

    wait_until(logged, START_BOUND_S, f"{text!r} in the launcher's log")


def _stop(launcher: subprocess.Popen) -> int:
    launcher.send_signal(signal.SIGTERM)
    return launcher.wait(timeout=90)


def test_a_corrupt_version_is_left_out_and_named_while_the_rest_serves(tmp_path):
    repository = tmp_path / "repository"
    shutil.copytree(MODEL_REPOSITORY, repository, ignore=shutil.ignore_patterns("__pycache__"))
    (repository / "digits_classifier" / "2" / "model.onnx").write_bytes(b"\x00garbage" * 512)
    launcher, ports, log_path = _launch(tmp_path, repository, "--no-gateway", "--no-supervisor")
    try:
        _wait_for_log(launcher, log_path, "ready: HTTP")
        log = log_path.read_text()
        failure = [line for line in log.splitlines() if "NOT SERVED" in line]
        assert len(failure) == 1, log[-4000:]
        assert "model 'digits_classifier' version 2 failed to load" in failure[0]
        assert "INVALID_PROTOBUF" in failure[0]  # Triton's reason, in one line
        with Client(f"127.0.0.1:{ports.http}") as client:
            assert client.live_versions("digits_classifier") == ["1", "3", "4", "5"]
            pixels = {"pixels": np.zeros((1, 64), dtype=np.float32)}
            assert client.infer("digits_classifier", pixels, 1, retry=False)
            image = np.zeros((8, 8), dtype=np.uint8)
            assert client.digits(image, version=1, retry=False).model_version == "1"
            prompt = {"text_input": np.array([b"hi"], dtype=object)}
            assert list(client.stream("text_generator", prompt, retry=False))
            with pytest.raises(MlapiError):
                client.infer("digits_classifier", pixels, 2, retry=False)
        assert _stop(launcher) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_tritonserver_killed_under_the_gateway_is_restarted_on_the_same_ports(
    tmp_path, report_figure
):
    launcher, ports, log_path = _launch(tmp_path, MODEL_REPOSITORY, "--no-supervisor")
    gateway = f"http://127.0.0.1:{launcher.gateway_port}"
    try:
        _wait_for_log(launcher, log_path, "ready: HTTP")
        wait_until(lambda: _answers(f"{gateway}/healthz"), START_BOUND_S, "the gateway")
        first = _kill_server(ports.http)
        killed = time.monotonic()
        _wait_for_log(launcher, log_path, "ready: HTTP", after=1)
        restart_s = time.monotonic() - killed
        second = _server_pid(ports.http)
        assert second not in (None, first)
        assert _process_group_members(first) == []  # the old server's stubs are gone
        assert "restarting it" in log_path.read_text()
        with Client(f"127.0.0.1:{ports.http}") as client:  # same port, same key
            assert client.is_ready("digits")
        assert _answers(f"{gateway}/healthz")  # the gateway stayed up throughout
        report_figure("tritonserver SIGKILL: back and ready after (s)", round(restart_s, 1))
        assert _stop(launcher) == 0
        assert _process_group_members(second) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_a_tritonserver_that_keeps_dying_ends_serve_with_status_1(tmp_path):
    launcher, ports, log_path = _launch(
        tmp_path, MODEL_REPOSITORY, "--no-gateway", "--no-supervisor", "--max-restarts", "1"
    )
    try:
        _wait_for_log(launcher, log_path, "ready: HTTP")
        _kill_server(ports.http)
        _wait_for_log(launcher, log_path, "ready: HTTP", after=1)
        _kill_server(ports.http)
        assert launcher.wait(timeout=90) == 1
        assert "after 1 restarts in 10 minutes: stopping" in log_path.read_text()
        assert _server_pid(ports.http) is None
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
