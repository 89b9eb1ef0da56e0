"""The sync client is generated from the async one: same methods, same signatures."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

from mlapi_client import AsyncClient, Client, ConnectionFailedError, MlapiError

PUBLIC = [
    "is_live",
    "is_ready",
    "list_models",
    "live_versions",
    "contract",
    "model_config",
    "inference_statistics",
    "load_model",
    "unload_model",
    "infer",
    "digits",
    "stream",
]


@pytest.mark.parametrize("name", PUBLIC)
def test_same_surface(name: str) -> None:
    sync_params = list(inspect.signature(getattr(Client, name)).parameters)
    async_params = list(inspect.signature(getattr(AsyncClient, name)).parameters)
    assert sync_params == async_params


def test_public_methods_are_all_covered() -> None:
    names = {n for n, v in vars(AsyncClient).items() if callable(v) and not n.startswith("_")}
    assert names - {"close", "from_settings"} == set(PUBLIC)


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mlapi-client-loop"]


def test_errors_cross_the_thread_and_close_stops_it() -> None:
    # Counted by name: aiohttp's resolver (pycares, when aiodns is installed) starts a
    # process-wide helper thread on first use that outlives every client.
    before = _loop_threads()
    client = Client("http://127.0.0.1:1", retry=None, timeout_s=5)
    (started,) = set(_loop_threads()) - set(before)
    with pytest.raises(ConnectionFailedError):
        client.is_live(retry=False)
    client.close()
    client.close()  # idempotent
    assert not started.is_alive()
    assert _loop_threads() == before


def test_a_closed_client_refuses_with_an_mlapi_error() -> None:
    async def closed_call() -> None:
        client = AsyncClient("http://127.0.0.1:1")
        await client.close()
        await client.is_live(retry=False)

    with pytest.raises(MlapiError, match="closed"):
        asyncio.run(closed_call())


def test_defaults_and_url_scheme_pick_the_protocol() -> None:
    with Client("grpc://127.0.0.1:1") as grpc_client:
        assert grpc_client.protocol == "grpc"
        assert grpc_client.settings.timeout_s == 30.0
    assert AsyncClient("127.0.0.1:1", protocol="grpc").protocol == "grpc"
    assert AsyncClient("127.0.0.1:1").protocol == "http"
    with pytest.raises(ValueError):
        AsyncClient("http://127.0.0.1:1", protocol="grpc")
