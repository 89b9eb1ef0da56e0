"""Client integration fixtures: every public call, over HTTP and gRPC, sync and async.

``api`` runs one call through a fresh ``Client`` or ``AsyncClient`` (so each test covers
open, call and close), against the test run's real tritonserver. ``private_servers`` starts
separate tritonservers serving only the ``slow`` test model, for tests that stop them.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from mlapi_client import AsyncClient, Client, RetryPolicy, access
from mlapi_tools.local.triton_process import Ports, TritonServer

TEST_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def url_of(server: TritonServer, protocol: str) -> str:
    return f"http://{server.http_url}" if protocol == "http" else f"grpc://{server.grpc_url}"


class Api:
    """One client call in one style: ``api("digits", image)`` -> the call's result."""

    def __init__(self, url: str, style: str) -> None:
        self.url = url
        self.style = style
        self.protocol = url.split("://")[0]

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.style == "sync":
            with Client(self.url) as client:
                return getattr(client, method)(*args, **kwargs)

        async def call() -> Any:
            async with AsyncClient(self.url) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(call())

    def stream(self, *args: Any, stop_after: int | None = None, **kwargs: Any) -> list[Any]:
        """Collect a stream's responses, leaving it early after ``stop_after`` of them."""
        if self.style == "sync":
            with Client(self.url) as client:
                return _take(client.stream(*args, **kwargs), stop_after)

        async def collect() -> list[Any]:
            async with AsyncClient(self.url) as client:
                got: list[Any] = []
                async for response in client.stream(*args, **kwargs):
                    got.append(response)
                    if len(got) == stop_after:
                        break
                return got

        return asyncio.run(collect())

    def __repr__(self) -> str:
        return f"{self.protocol}-{self.style}"


def _take(responses: Iterator[Any], stop_after: int | None) -> list[Any]:
    got = []
    for response in responses:
        got.append(response)
        if len(got) == stop_after:
            break
    close = getattr(responses, "close", None)
    if close is not None:
        close()
    return got


@pytest.fixture(
    params=[("http", "sync"), ("http", "async"), ("grpc", "sync"), ("grpc", "async")],
    ids=["http-sync", "http-async", "grpc-sync", "grpc-async"],
)
def api(request: pytest.FixtureRequest, triton: TritonServer) -> Api:
    protocol, style = request.param
    return Api(url_of(triton, protocol), style)


@pytest.fixture(params=["http", "grpc"])
def url(request: pytest.FixtureRequest, triton: TritonServer) -> str:
    return url_of(triton, request.param)


def metric_value(server: TritonServer, name: str) -> float:
    """Sum of a Prometheus metric's samples on the server's metrics port (0 when absent)."""
    with urllib.request.urlopen(server.metrics_url, timeout=30) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def slow_only_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "repository"
    repository.mkdir(parents=True)
    (repository / "slow").symlink_to(TEST_REPOSITORY / "slow", target_is_directory=True)
    return repository


class PrivateServers:
    """Private tritonservers serving only the ``slow`` test model, on free ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[TritonServer] = []
        self.logs: list[IO[bytes]] = []

    def create(self) -> TritonServer:
        server = TritonServer(
            [slow_only_repository(self.workdir / f"server{len(self.servers)}")],
            backend_dir=self.workdir / "backends",
            ports=Ports.free(),
            exit_timeout_s=2,
            access_key=access.read_key(),
        )
        self.servers.append(server)
        return server

    def start(self, server: TritonServer) -> None:
        log = (self.workdir / f"tritonserver-{server.ports.http}.log").open("wb")
        self.logs.append(log)
        server.start(log)

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()
        for log in self.logs:
            log.close()


@pytest.fixture
def private_servers(tmp_path: Path) -> Iterator[PrivateServers]:
    servers = PrivateServers(tmp_path)
    try:
        yield servers
    finally:
        servers.stop_all()


PATIENT = RetryPolicy(max_attempts=1000, initial_backoff_s=0.2, max_backoff_s=1.0, deadline_s=120.0)
