"""Both classifier versions are live, addressable by version, and return their own predictions."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.utils import InferenceServerException

from mlapi_backend.build.digits_data import preprocessed
from mlapi_backend.build.digits_models import read_metrics

from .conftest import MODEL_REPOSITORY

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
    assert sorted(versions) == ["1", "2"]


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
