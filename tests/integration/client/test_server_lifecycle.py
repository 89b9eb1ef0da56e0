"""A private tritonserver that is unloaded, stopped, or comes up late: the typed errors and
the retries, over both protocols, sync and async."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

from mlapi_client import (
    AsyncClient,
    Client,
    ConnectionFailedError,
    ModelUnavailableError,
    access,
)

from .conftest import PATIENT, Api, PrivateServers, url_of

STYLES = [("http", "sync"), ("http", "async"), ("grpc", "sync"), ("grpc", "async")]
DELAY_0 = {"delay_ms": np.array([[0]], np.int32)}
CALLERS = 4  # the late-server test: async and sync, over HTTP and gRPC


def test_unloaded_model_then_stopped_server(private_servers: PrivateServers) -> None:
    server = private_servers.create()
    private_servers.start(server)
    server.wait_ready(timeout_s=120)
    apis = [Api(url_of(server, protocol), style) for protocol, style in STYLES]
    kept = Client(url_of(server, "grpc"))  # a client whose channel is open when the server goes
    try:
        assert kept.infer("slow", DELAY_0)["slept_ms"].tolist() == [[0]]
        for api in apis:
            assert api("infer", "slow", DELAY_0).model_name == "slow"

        admin = access.with_key(httpclient.InferenceServerClient(server.http_url))
        admin.unload_model("slow")
        try:
            wait_for_state(admin, "slow", "UNAVAILABLE")
            for api in apis:
                with pytest.raises(ModelUnavailableError, match="unloaded"):
                    api("infer", "slow", DELAY_0, retry=False)
                with pytest.raises(ModelUnavailableError):
                    api("infer", "slow", DELAY_0, version=1, retry=False)
                assert api("is_ready", "slow") is False
                assert api("live_versions", "slow") == []
        finally:
            admin.load_model("slow")
            admin.close()
        for api in apis:
            assert api("infer", "slow", DELAY_0).model_name == "slow"

        server.stop()
        for api in apis:
            with pytest.raises(ConnectionFailedError):
                api("infer", "slow", DELAY_0, retry=False)
            with pytest.raises(ConnectionFailedError):
                api("is_live", retry=False)
        with pytest.raises(ConnectionFailedError):
            kept.infer("slow", DELAY_0, retry=False)
    finally:
        kept.close()


def wait_for_state(admin: httpclient.InferenceServerClient, model: str, state: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(
            m["name"] == model and m.get("state") == state
            for m in admin.get_model_repository_index()
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"{model} never reached {state}")


def test_retries_until_a_late_server_comes_up(
    private_servers: PrivateServers, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_servers.create()

    def connection_failures() -> int:
        """Callers whose first retry followed a refused connection (one "retry 1" each)."""
        return sum(
            1
            for record in list(caplog.records)
            if record.getMessage().startswith("retry 1 ")
            and "ConnectionFailedError" in record.getMessage()
        )

    def start_once_every_caller_failed() -> None:
        # The server comes up only after all four callers were refused (not after a fixed
        # delay that a loaded machine could outlast before the calls even began).
        deadline = time.monotonic() + 60
        while connection_failures() < CALLERS and time.monotonic() < deadline:
            time.sleep(0.05)
        private_servers.start(server)

    starter = threading.Thread(target=start_once_every_caller_failed)

    def sync_call(protocol: str) -> list[list[int]]:
        with Client(url_of(server, protocol), retry=PATIENT) as client:
            return client.infer("slow", DELAY_0)["slept_ms"].tolist()

    async def async_call(protocol: str) -> list[list[int]]:
        async with AsyncClient(url_of(server, protocol), retry=PATIENT) as client:
            return (await client.infer("slow", DELAY_0))["slept_ms"].tolist()

    async def all_styles() -> list[list[list[int]]]:
        return await asyncio.gather(
            async_call("http"),
            async_call("grpc"),
            asyncio.to_thread(sync_call, "http"),
            asyncio.to_thread(sync_call, "grpc"),
        )

    with caplog.at_level(logging.INFO, logger="mlapi_client.retry"):
        starter.start()
        try:
            results = asyncio.run(all_styles())
        finally:
            starter.join()
    assert results == [[[0]]] * CALLERS
    assert connection_failures() == CALLERS  # every call began before the server existed
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retry ")]
    assert any("ConnectionFailedError" in message for message in retries), retries
