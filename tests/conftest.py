"""Shared test configuration: the session's tritonserver and access key, and measured figures.

The server fixtures live here, not in tests/integration, so that every tier that needs a real
server (integration tests, the docs' examples) shares one server and one key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mlapi_client import access
from mlapi_tools.local.triton_process import Ports, TritonServer

ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = ROOT / "model_repository"
TEST_REPOSITORY = ROOT / "tests" / "model_repository"
PUBLIC_MODELS = ("digits", "digits_classifier")

_FIGURES: list[tuple[str, Any]] = []


@pytest.fixture
def report_figure():
    """Record a measured figure (e.g. an accuracy or a rate) to print after the run."""

    def record(name: str, value: Any) -> None:
        _FIGURES.append((name, value))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("measured figures")
        for name, value in _FIGURES:
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def triton_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One access key for every server the tests start, found by every client (env var).

    Requested (autouse) by the tiers that start servers; unit tests run without it.
    """
    key_file = tmp_path_factory.mktemp("key") / "triton.key"
    key = access.ensure_key(key_file)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(access.KEY_FILE_ENV, str(key_file))
        patch.delenv(access.KEY_ENV, raising=False)
        yield key


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory, triton_key: str) -> Iterator[TritonServer]:
    if not (MODEL_REPOSITORY / "digits_classifier" / "1" / "model.onnx").is_file():
        pytest.fail("models are not built: run `make models` (make test does it for you)")
    workdir = tmp_path_factory.mktemp("triton")
    server = TritonServer(
        [MODEL_REPOSITORY, TEST_REPOSITORY],
        backend_dir=workdir / "backends",
        ports=Ports.free(),
        exit_timeout_s=5,
        die_with_parent=True,  # a killed test run leaves no server behind
        access_key=triton_key,
    )
    log_path = workdir / "tritonserver.log"
    with log_path.open("wb") as log_file:
        server.start(log_file)
        try:
            server.wait_ready(timeout_s=120, models=PUBLIC_MODELS)
        except (RuntimeError, TimeoutError) as exc:
            server.stop()
            pytest.fail(f"{exc}\n--- tritonserver log ---\n{log_path.read_text()[-5000:]}")
        yield server
        server.stop()


@contextmanager
def own_triton(
    workdir: Path,
    repositories: Sequence[Path] = (MODEL_REPOSITORY,),
    models: Sequence[str] = PUBLIC_MODELS,
    **options: Any,
) -> Iterator[TritonServer]:
    """A tritonserver of a test module's own (free ports, the session key), always stopped.

    For tests that change, overload or break their server; ``options`` go to TritonServer.
    """
    server = TritonServer(
        list(repositories),
        workdir / "backends",
        ports=Ports.free(),
        exit_timeout_s=options.pop("exit_timeout_s", 5),
        die_with_parent=options.pop("die_with_parent", True),
        access_key=options.pop("access_key", access.read_key()),
        **options,
    )
    log_path = workdir / "tritonserver.log"
    with log_path.open("wb") as log:
        server.start(log)
        try:
            try:
                server.wait_ready(timeout_s=180, models=models)
            except (RuntimeError, TimeoutError) as exc:
                pytest.fail(f"{exc}\n--- tritonserver log ---\n{log_path.read_text()[-5000:]}")
            yield server
        finally:
            server.stop()
