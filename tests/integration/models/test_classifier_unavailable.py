"""A classifier that ``digits`` cannot reach is 503 unavailable, never a 500 (a real tritonserver).

``digits`` calls ``digits_classifier`` by BLS. Whether that version's stub died (Triton still
reports it ready) or the classifier was unloaded, callers of ``digits`` get UNAVAILABLE (HTTP
503, gRPC UNAVAILABLE), and the gateway's 503 with Retry-After; a version that still serves
keeps serving pinned requests.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from mlapi_client import Client
from mlapi_client.errors import ModelUnavailableError
from mlapi_tools.local import stubs
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import PUBLIC_MODELS, own_triton
from tests.integration.gateway.conftest import gateway_env
from tests.integration.gateway.harness import Gateway, create_key

IMAGE = np.zeros((8, 8), dtype=np.uint8)
PIXELS = {"pixels": IMAGE.tolist()}
STATUS = {"http": "503", "grpc": "UNAVAILABLE"}
WAIT_S = 60.0


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A server of this module's own: its tests kill stubs and unload the classifier."""
    with own_triton(tmp_path_factory.mktemp("classifier_faults"), models=PUBLIC_MODELS) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    workdir = tmp_path_factory.mktemp("classifier_faults_gateway")
    key = create_key(workdir / "keys.json", "predict")
    started = Gateway(gateway_env(triton, workdir), workdir / "gateway.log").start()
    try:
        with httpx.Client(
            base_url=started.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as api:
            yield api
    finally:
        started.stop()


def _clients(triton: TritonServer) -> dict[str, Client]:
    return {
        "http": Client(triton.http_url, protocol="http"),
        "grpc": Client(triton.grpc_url, protocol="grpc"),
    }


def _digits_error(client: Client, version: int | None = None) -> ModelUnavailableError:
    with pytest.raises(ModelUnavailableError) as failed:
        client.digits(IMAGE, version=version, retry=False)
    return failed.value


def _assert_gateway_503(api: httpx.Client, path: str) -> None:
    reply = api.post(path, json=PIXELS)
    assert reply.status_code == 503, reply.text
    assert int(reply.headers["Retry-After"]) >= 1
    assert reply.json()["status"] == 503


def _kill(triton: TritonServer, model: str, version: str) -> None:
    assert triton.pid is not None
    victims = [s for s in stubs.list_stubs(triton.pid) if (s.model, s.version) == (model, version)]
    assert victims, f"no living stub of {model} version {version}"
    for victim in victims:
        os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    alive = {(s.model, s.version) for s in stubs.list_stubs(triton.pid)}
    while (model, version) in alive:
        assert time.monotonic() < deadline, f"{model} version {version} outlived SIGKILL"
        time.sleep(0.02)
        alive = {(s.model, s.version) for s in stubs.list_stubs(triton.pid)}


def test_a_dead_classifier_stub_is_unavailable_through_digits(triton, gateway):
    clients = _clients(triton)
    try:
        for client in clients.values():
            assert client.digits(IMAGE, retry=False).model_version == "2"  # the policy's version
        _kill(triton, "digits_classifier", "2")
        assert "2" in clients["http"].live_versions("digits_classifier")  # Triton: still ready
        for protocol, client in clients.items():
            for version in (None, 2):  # routed by the policy, then pinned
                error = _digits_error(client, version)
                assert error.status == STATUS[protocol], (protocol, version, error)
                assert "digits_classifier version 2" in str(error), error
                assert "is not healthy" in str(error), error
            assert client.digits(IMAGE, version=1, retry=False).model_version == "1"
        _assert_gateway_503(gateway, "/v1/models/digits/predict")
        _assert_gateway_503(gateway, "/v1/models/digits/versions/2/predict")
    finally:
        for client in clients.values():
            client.close()


def test_an_unloaded_classifier_is_unavailable_through_digits(triton, gateway):
    clients = _clients(triton)
    try:
        clients["http"].unload_model("digits_classifier")
        for protocol, client in clients.items():
            for version in (None, 1):
                error = _digits_error(client, version)
                assert error.status == STATUS[protocol], (protocol, version, error)
                assert "digits_classifier" in str(error), error
        _assert_gateway_503(gateway, "/v1/models/digits/predict")
        _assert_gateway_503(gateway, "/v1/models/digits/versions/1/predict")
    finally:
        for client in clients.values():
            client.close()
