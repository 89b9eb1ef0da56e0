"""Both classifier versions are live, addressable by version, and return their own predictions;
a version that failed to load is a 503 naming it while the other versions serve."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mlapi_backend.model_config import read_pbtxt
from mlapi_client import Client, access
from mlapi_tools.build.digits_data import preprocessed
from mlapi_tools.build.digits_models import read_metrics
from mlapi_tools.local.triton_process import Ports, TritonServer

from .conftest import MODEL_REPOSITORY, DigitsCaller, digits_inputs

VERSIONS = (1, 2)


@pytest.fixture(scope="module")
def held_out_pixels(split) -> np.ndarray:
    return preprocessed(list(split.test_images))


def _served_probabilities(caller, version: int, pixels: np.ndarray) -> np.ndarray:
    chunks = [
        caller.infer("digits_classifier", {"pixels": chunk}, version=str(version)).as_numpy(
            "probabilities"
        )
        for chunk in np.array_split(pixels, 3)
    ]
    return np.concatenate(chunks)


@pytest.mark.parametrize("version", VERSIONS)
def test_version_serves_its_own_model(caller, version, held_out_pixels, split):
    served = _served_probabilities(caller, version, held_out_pixels)
    onnx_path = MODEL_REPOSITORY / "digits_classifier" / str(version) / "model.onnx"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"pixels": held_out_pixels})[0]
    np.testing.assert_allclose(served, expected, atol=1e-5)
    accuracy = float((served.argmax(axis=1) == split.test_y).mean())
    assert accuracy == pytest.approx(
        read_metrics(MODEL_REPOSITORY, version)["held_out_accuracy"], abs=1e-6
    )


def test_versions_are_different_models(caller, held_out_pixels):
    v1, v2 = (_served_probabilities(caller, v, held_out_pixels) for v in VERSIONS)
    assert np.abs(v1 - v2).max() > 0.1
    assert (v1.argmax(axis=1) != v2.argmax(axis=1)).sum() >= 1


def test_both_versions_are_live_and_discoverable(caller):
    client = caller.client
    for version in VERSIONS:
        assert client.is_model_ready("digits_classifier", str(version))
    metadata = client.get_model_metadata("digits_classifier")
    versions = metadata["versions"] if isinstance(metadata, dict) else list(metadata.versions)
    folder = MODEL_REPOSITORY / "digits_classifier"
    configured = read_pbtxt(folder / "config.pbtxt")["version_policy"]["specific"]["versions"]
    built = [str(v) for v in sorted(configured) if (folder / str(v) / "model.onnx").is_file()]
    assert {"1", "2"} <= set(versions) and sorted(versions, key=int) == built


def test_unknown_version_is_a_clear_error(caller):
    with pytest.raises(InferenceServerException) as info:
        caller.infer("digits_classifier", {"pixels": np.zeros((1, 64), np.float32)}, version="7")
    assert "version" in info.value.message().lower() or "7" in info.value.message()
    assert info.value.status() in (
        "400",
        "404",
        "StatusCode.NOT_FOUND",
        "StatusCode.INVALID_ARGUMENT",
        "StatusCode.UNAVAILABLE",
    )


@pytest.fixture(scope="module")
def corrupt_v1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A server of its own over a repository copy whose classifier version 1 file is corrupt.

    Triton 2.51 loads a model's versions all or nothing, so the failed version 1 takes version
    2 down with it; the classifier is then reloaded with version 2 alone (what a launcher that
    tolerates a bad version does), while its config.pbtxt still names [1, 2].
    """
    workdir = tmp_path_factory.mktemp("corrupt_version")
    repo = workdir / "repository"
    shutil.copytree(MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "digits_classifier" / "1" / "model.onnx").write_bytes(b"not an ONNX model")
    server = TritonServer(
        [repo],
        workdir / "backends",
        ports=Ports.free(),
        exit_timeout_s=5,
        access_key=access.read_key(),
        extra_args=["--exit-on-error=false"],
    )
    with (workdir / "tritonserver.log").open("wb") as log:
        server.start(log)
        try:
            server.wait_ready(120, models=["digits"])
            with Client(server.http_url) as client:
                if "2" not in client.live_versions("digits_classifier"):
                    config = read_pbtxt(repo / "digits_classifier" / "config.pbtxt")
                    config["version_policy"] = {"specific": {"versions": [2]}}
                    client.load_model("digits_classifier", config)
                assert client.live_versions("digits_classifier") == ["2"]
            yield server
        finally:
            server.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_version_that_failed_to_load_is_503_naming_it_and_others_serve(
    corrupt_v1, protocol, split
):
    module = httpclient if protocol == "http" else grpcclient
    url = corrupt_v1.http_url if protocol == "http" else corrupt_v1.grpc_url
    caller = DigitsCaller(protocol, access.with_key(module.InferenceServerClient(url)))
    image = split.test_images[0]
    try:
        with pytest.raises(InferenceServerException) as failed:
            caller.infer("digits", digits_inputs(image), parameters={"model_version": "1"})
        assert failed.value.status() in ("503", "StatusCode.UNAVAILABLE"), failed.value.message()
        message = failed.value.message()
        assert "version 1 is configured but not ready" in message, message
        assert "failed to load" in message and "live versions: [2]" in message
        with pytest.raises(InferenceServerException) as unknown:
            caller.infer("digits", digits_inputs(image), parameters={"model_version": "9"})
        assert unknown.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        assert "model_version" in unknown.value.message() and "[2]" in unknown.value.message()
        served = caller.digits(image, top_k=1)
        meta = json.loads(served.as_numpy("metadata")[0, 0])
        assert meta["classifier"]["version"] == "2"
        assert served.as_numpy("labels")[0, 0].decode() == str(split.test_y[0])
        assert caller.client.is_server_live()
    finally:
        caller.client.close()
