"""Fault tests: a Triton of their own (stubs get killed), steady client load, supervisor handles."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from mlapi_client import Client, access
from mlapi_client.errors import ModelCrashedError
from mlapi_tools.local import stubs
from mlapi_tools.local.supervisor import SupervisorThread
from mlapi_tools.local.supervisor_settings import SupervisorSettings
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton as start_triton


@pytest.fixture(scope="module")
def own_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A restricted tritonserver with the project's models, for tests that break it."""
    models = ("digits", "digits_classifier", "text_generator")
    with start_triton(tmp_path_factory.mktemp("faults"), models=models) as server:
        yield server


RELOADS = "mlapi_supervisor_reloads_total"
# Recovery takes ~1.2-3 s on a shared 2-CPU machine; the bound leaves room for a busier one.
RECOVERY_BOUND_S = 30.0
IMAGE = np.zeros((8, 8), dtype=np.uint8)


@pytest.fixture(scope="module")
def raw_client(own_triton: TritonServer) -> Iterator[Client]:
    with Client(own_triton.http_url) as client:
        yield client


def serves(client: Client) -> bool:
    """Whether digits answers (False while its stub is dead)."""
    try:
        client.digits(IMAGE, retry=False)
    except ModelCrashedError:
        return False
    return True


def live_config(server: TritonServer, model: str) -> dict:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/models/{model}/config",
        headers=access.http_headers(access.read_key()),
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return dict(json.loads(reply.read()))


def metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


@pytest.fixture
def start_supervisor(own_triton: TritonServer) -> Iterator[Callable[..., SupervisorThread]]:
    """Start a supervisor of ``own_triton`` with settings overrides; stopped after the test."""
    started: list[SupervisorThread] = []

    def start(**overrides: object) -> SupervisorThread:
        settings = SupervisorSettings.from_env(
            {}, triton_url=f"grpc://{own_triton.grpc_url}", **overrides
        )
        thread = SupervisorThread(settings, server_pid=lambda: own_triton.pid).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()


def kill_stub(server: TritonServer, model: str, version: str = "1") -> float:
    """SIGKILL every stub (instance) running ``model`` at ``version``; the time of the kill."""
    assert server.pid is not None
    victims = [s for s in stubs.list_stubs(server.pid) if (s.model, s.version) == (model, version)]
    assert victims, f"no living stub for {model} version {version}"
    for victim in victims:
        os.kill(victim.pid, signal.SIGKILL)
    return time.monotonic()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


def sample(thread: SupervisorThread, name: str, **labels: str) -> float:
    value = thread.supervisor.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


@dataclass(frozen=True)
class Attempt:
    start: float
    end: float
    error: BaseException | None


@dataclass
class SteadyLoad:
    """One request every ``period_s`` from a thread (one at a time), every outcome recorded."""

    call: Callable[[], object]
    period_s: float = 0.05
    attempts: list[Attempt] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SteadyLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            error: BaseException | None = None
            try:
                self.call()
            except Exception as exc:  # recorded: the test judges it
                error = exc
            self.attempts.append(Attempt(start, time.monotonic(), error))
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - start)))

    def served_since(self, since: float) -> bool:
        """A request that started after ``since`` and after the last failure succeeded."""
        attempts = list(self.attempts)
        last_failure = max((a.start for a in attempts if a.error is not None), default=since)
        return any(a.error is None and a.start > max(since, last_failure) for a in attempts)

    def outage(self, since: float) -> tuple[float, list[Attempt]]:
        """Seconds from ``since`` until requests succeed again, and the failures in between."""
        attempts = [a for a in self.attempts if a.end > since]
        failures = [a for a in attempts if a.error is not None]
        if not failures:
            return 0.0, []
        last = max(a.start for a in failures)
        recovered = [a.end for a in attempts if a.error is None and a.start > last]
        return (min(recovered) - since if recovered else float("inf")), failures
