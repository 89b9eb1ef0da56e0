"""503 with Retry-After when the model is not ready or Triton is gone (a server of our own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.http as httpclient

from mlapi_client import access
from mlapi_tools.build.digits_data import DigitsSplit
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton as start_triton

from ..conftest import TEST_REPOSITORY
from .conftest import gateway_env
from .harness import Gateway, create_key


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonServer]:
    with start_triton(tmp_path, [TEST_REPOSITORY], models=("slow",)) as server:
        yield server


def _assert_503(reply: httpx.Response) -> None:
    assert reply.status_code == 503, reply.text
    assert int(reply.headers["Retry-After"]) >= 1
    assert reply.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in reply.text


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unloaded_model_then_stopped_triton_are_503(
    own_triton: TritonServer, tmp_path: Path, protocol: str
) -> None:
    """For both protocols of the gateway's unary calls to Triton (triton_infer_protocol)."""
    key = create_key(tmp_path / "keys.json", "predict")
    env = gateway_env(own_triton, tmp_path, triton_infer_protocol=protocol)
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    try:
        with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as api:
            body = {"inputs": {"delay_ms": [[1]]}}
            assert api.post("/v1/models/slow/predict", json=body).status_code == 200
            late = api.post(
                "/v1/models/slow/predict?timeout_s=0.3", json={"inputs": {"delay_ms": [[1500]]}}
            )
            assert late.status_code == 504, late.text
            assert api.post("/v1/models/slow/predict", json=body).status_code == 200
            triton_http = access.with_key(httpclient.InferenceServerClient(own_triton.http_url))
            triton_http.unload_model("slow")
            triton_http.close()
            _assert_503(api.post("/v1/models/slow/predict", json=body))
            own_triton.stop()
            _assert_503(api.post("/v1/models/slow/predict", json=body))
            _assert_503(api.get("/readyz"))
            assert api.get("/healthz").status_code == 200
            metrics = api.get("/metrics").text
            assert 'mlapi_gateway_errors_total{status_class="5xx",type="unavailable"}' in metrics
    finally:
        gateway.stop()


def test_a_refused_access_key_is_503_and_not_ready(
    triton: TritonServer, tmp_path: Path, split: DigitsSplit
) -> None:
    """A gateway holding the wrong Triton key: callers get 503, readiness says Triton, the log
    says why; nothing is blamed on the model (502)."""
    key = create_key(tmp_path / "keys.json", "predict")
    env = {**gateway_env(triton, tmp_path), access.KEY_ENV: "not-the-key"}
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    try:
        with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as api:
            _assert_503(
                api.post(
                    "/v1/models/digits/predict",
                    json={"pixels": split.test_images[0].tolist()},
                    headers={"X-Request-ID": "bad-key-1"},
                )
            )
            reply = api.get("/readyz")
            _assert_503(reply)
            assert "Triton" in reply.json()["detail"]
        assert "access key" in gateway.log()
        # Once, as an error (only an operator can fix it), with the request id and the cause.
        logged = [line for line in gateway.log().splitlines() if "(request bad-key-1;" in line]
        assert len(logged) == 1 and " ERROR " in logged[0], logged
        assert "cause AccessDeniedError" in logged[0], logged
    finally:
        gateway.stop()
