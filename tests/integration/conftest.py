"""A real tritonserver for the integration tests: started once on free ports, always stopped.

It serves the project's model_repository plus tests/model_repository (purpose-built test
models), through the same launcher `make serve` uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from mlapi_client import access
from mlapi_tools.build.digits_data import DigitsSplit, load_split
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import MODEL_REPOSITORY, PUBLIC_MODELS, ROOT, TEST_REPOSITORY

__all__ = ["MODEL_REPOSITORY", "PUBLIC_MODELS", "ROOT", "TEST_REPOSITORY"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _every_client_finds_the_key(triton_key: str) -> None:
    """The session key (tests/conftest.py) is in the environment of every test here."""


@pytest.fixture(scope="session")
def http_client(triton: TritonServer) -> Iterator[httpclient.InferenceServerClient]:
    client = access.with_key(httpclient.InferenceServerClient(triton.http_url, concurrency=8))
    yield client
    client.close()


@pytest.fixture(scope="session")
def grpc_client(triton: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = access.with_key(grpcclient.InferenceServerClient(triton.grpc_url))
    yield client
    client.close()


@pytest.fixture(scope="session")
def split() -> DigitsSplit:
    return load_split()


class DigitsCaller:
    """Calls ``digits`` (or any model) over one protocol with plain tritonclient."""

    def __init__(self, protocol: str, client: object) -> None:
        self.protocol = protocol
        self.client = client
        self.module = httpclient if protocol == "http" else grpcclient

    def infer(
        self,
        model: str,
        inputs: dict,
        version: str = "",
        outputs: list[str] | None = None,
        parameters: dict | None = None,
    ):
        tensors, requested = self._request(inputs, outputs)
        return self.client.infer(
            model, tensors, model_version=version, outputs=requested, parameters=parameters
        )

    def infer_many(self, model: str, requests: list[dict], version: str = "") -> list:
        """Send many requests concurrently (8 in flight) and return results in order.

        tritonclient's HTTP client is gevent-based and not thread-safe, so HTTP uses its
        async_infer; the gRPC client is thread-safe and is driven by a thread pool.
        """
        if self.protocol == "http":
            results = []
            for start in range(0, len(requests), 8):
                handles = [
                    self.client.async_infer(model, self._request(r, None)[0], model_version=version)
                    for r in requests[start : start + 8]
                ]
                results.extend(h.get_result() for h in handles)
            return results
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda r: self.infer(model, r, version), requests))

    def _request(self, inputs: dict, outputs: list[str] | None) -> tuple[list, list | None]:
        infer_inputs = []
        for name, array in inputs.items():
            dtype = "BYTES" if array.dtype == object else _triton_dtype(array)
            tensor = self.module.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        requested = [self.module.InferRequestedOutput(n) for n in outputs] if outputs else None
        return infer_inputs, requested

    def digits(self, image, top_k: int | None = None):
        return self.infer("digits", digits_inputs(image, top_k))

    def digits_many(self, images: list, top_k: int | None = None) -> list:
        return self.infer_many("digits", [digits_inputs(img, top_k) for img in images])


def digits_inputs(image, top_k: int | None = None) -> dict:
    """`digits` request tensors for one image [H, W] (or a batch [B, H, W])."""
    inputs = {"image": image[None] if image.ndim == 2 else image}
    if top_k is not None:
        inputs["top_k"] = np.full((inputs["image"].shape[0], 1), top_k, dtype=np.int32)
    return inputs


def _triton_dtype(array) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


@pytest.fixture(params=["http", "grpc"])
def caller(request: pytest.FixtureRequest, http_client, grpc_client) -> DigitsCaller:
    client = http_client if request.param == "http" else grpc_client
    return DigitsCaller(request.param, client)
