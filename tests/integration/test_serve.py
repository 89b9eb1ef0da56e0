"""`make serve`'s launcher: foreground tritonserver, the API gateway and the supervisor on the
env-configured ports, stopped cleanly by Ctrl-C (SIGINT) or SIGTERM with no process left behind.
Faults (a corrupt version, a killed server) are in tests/integration/faults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mlapi_tools.local.triton_process import Ports

from .conftest import MODEL_REPOSITORY, ROOT

START_BOUND_S = 180.0  # start-up takes ~4 s idle; a loaded 2-CPU machine needs far more


def _process_group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Field 5 of /proc/<pid>/stat is the process group id. A zombie (state Z) is dead: the
        # stubs of a killed server are reparented to PID 1, which reaps them in its own time.
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _server_pid(http_port: int) -> int | None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            args
            and args[0].endswith(b"tritonserver")
            and f"--http-port={http_port}".encode() in args
        ):
            return int(cmdline.parent.name)
    return None


def _answers(url: str) -> bool:
    try:  # a slow answer on a loaded machine is still an answer
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


def _serve(tmp_path: Path, ports: Ports, repository: Path, *flags: str) -> tuple[list[str], dict]:
    """The `make serve` launcher's command and environment, with every state file in tmp_path."""
    env = dict(
        os.environ,
        TRITON_HTTP_PORT=str(ports.http),
        TRITON_GRPC_PORT=str(ports.grpc),
        TRITON_METRICS_PORT=str(ports.metrics),
        GATEWAY_PORT=str(Ports.free().http),
        MLAPI_GATEWAY_KEYS_FILE=str(tmp_path / "keys.json"),
        MLAPI_GATEWAY_JOBS_DB=str(tmp_path / "jobs.sqlite3"),
    )
    command = [
        sys.executable, "-m", "mlapi_tools.local", "serve", *flags,
        "--repository", str(repository), "--backend-dir", str(tmp_path / "backends"),
    ]  # fmt: skip
    return command, env


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_runs_on_env_ports_and_stops_cleanly(tmp_path, stop_signal):
    ports = Ports.free()
    command, env = _serve(tmp_path, ports, MODEL_REPOSITORY)
    gateway_port = int(env["GATEWAY_PORT"])
    log = (tmp_path / "serve.log").open("wb")
    launcher = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_BOUND_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{ports.http}/v2/models/digits/ready", timeout=10
                ):
                    break
            except OSError:
                assert launcher.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.3)
        else:
            pytest.fail("serve did not become ready")
        # The metrics port may open a moment after the HTTP one answers: wait, do not race it.
        metrics_url = f"http://127.0.0.1:{ports.metrics}/metrics"
        deadline = time.monotonic() + 30
        while not _answers(metrics_url):
            assert time.monotonic() < deadline, "the metrics port never answered"
            time.sleep(0.2)
        with urllib.request.urlopen(metrics_url, timeout=30) as reply:
            assert b"nv_inference_count" in reply.read()
        server_pid = _server_pid(ports.http)
        assert server_pid is not None
        assert len(_process_group_members(server_pid)) >= 2  # the server and its Python stubs
        # The gateway runs in front of Triton: up, and asking for a key.
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        deadline = time.monotonic() + 60
        while not _answers(f"{gateway_url}/healthz"):
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{gateway_url}/v1/models", timeout=30)
        assert refused.value.code == 401
        refused.value.close()

        launcher.send_signal(stop_signal)
        assert launcher.wait(timeout=60) == 0
        assert _process_group_members(server_pid) == []
        assert _server_pid(ports.http) is None
        assert not _answers(f"{gateway_url}/healthz")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        log.close()


def test_serve_exits_non_zero_when_no_model_loads(tmp_path):
    """A failed model no longer stops the others (tests/integration/faults), but a server
    with nothing to serve is an error."""
    model = tmp_path / "repository" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
        'input [{name: "x" data_type: TYPE_FP32 dims: [3]}]\n'
        'output [{name: "y" data_type: TYPE_FP32 dims: [3]}]\n'
    )
    command, env = _serve(tmp_path, Ports.free(), tmp_path / "repository", "--no-gateway")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    output = done.stderr + done.stdout
    assert "NOT SERVED: model 'broken' version 1 failed to load" in output
    assert "loaded no model at all" in output
    assert _server_pid(int(env["TRITON_HTTP_PORT"])) is None


def test_a_killed_launcher_leaves_nothing_behind(tmp_path):
    """Even SIGKILL of the launcher (no chance to clean up) takes the server and gateway down."""
    ports = Ports.free()
    command, env = _serve(tmp_path, ports, MODEL_REPOSITORY)
    launcher = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + START_BOUND_S
        while _server_pid(ports.http) is None or not _ready(ports.http):
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        server_pid = _server_pid(ports.http)
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 60
        while _process_group_members(server_pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _process_group_members(server_pid) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def _ready(http_port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/v2/models/digits/ready", timeout=10
        ):
            return True
    except OSError:
        return False
