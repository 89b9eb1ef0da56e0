"""Typed ``digits`` calls and generic ``infer`` over HTTP and gRPC, sync and async."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlapi_tools.build.digits_data import DigitsSplit

from .conftest import Api


@pytest.fixture(scope="module")
def digit(split: DigitsSplit) -> tuple[np.ndarray, str]:
    """A held-out image and its true label, enlarged to a realistic 64x64 picture."""
    image = np.asarray(Image.fromarray(split.test_images[0]).resize((64, 64)), dtype=np.uint8)
    return image, str(split.test_y[0])


def test_digits_from_every_input_kind(
    api: Api, digit: tuple[np.ndarray, str], tmp_path: Path
) -> None:
    image, truth = digit
    png = io.BytesIO()
    Image.fromarray(image).save(png, "PNG")
    path = tmp_path / "digit.png"
    path.write_bytes(png.getvalue())
    results = [
        api("digits", kind) for kind in (image, Image.fromarray(image), path, png.getvalue())
    ]
    for result in results:
        assert result.label == truth
        assert result.low_confidence is False
        assert result.model_version in ("1", "2")
        assert result.metadata["classifier"]["name"] == "digits_classifier"
    # A lossless input gives the same answer whatever form it came in.
    assert len({r.predictions for r in results}) == 1


def test_digits_top_k_is_ranked(api: Api, digit: tuple[np.ndarray, str]) -> None:
    result = api("digits", digit[0], top_k=5)
    scores = [p.score for p in result.predictions]
    assert len(scores) == 5
    assert scores == sorted(scores, reverse=True)
    assert len({p.label for p in result.predictions}) == 5


@pytest.mark.parametrize("version", [1, 2])
def test_digits_version_pinning(api: Api, digit: tuple[np.ndarray, str], version: int) -> None:
    result = api("digits", digit[0], version=version)
    assert result.model_version == str(version)
    assert result.label == digit[1]


def test_digits_accuracy_on_held_out_images(api: Api, split: DigitsSplit) -> None:
    images, truth = split.test_images[:20], split.test_y[:20]
    labels = [api("digits", image).label for image in images]
    correct = sum(label == str(t) for label, t in zip(labels, truth, strict=True))
    assert correct >= 18, f"{correct}/20 correct"


def test_generic_infer_on_a_pinned_version(api: Api, split: DigitsSplit) -> None:
    pixels = split.test_x[:3].astype(np.float32)
    by_version = {
        v: api("infer", "digits_classifier", {"pixels": pixels}, version=v) for v in (1, 2)
    }
    for version, response in by_version.items():
        assert response.model_name == "digits_classifier"
        assert response.model_version == str(version)
        probabilities = response["probabilities"]
        assert probabilities.shape == (3, 10)
        assert probabilities.argmax(axis=1).tolist() == split.test_y[:3].tolist()
    assert not np.allclose(by_version[1]["probabilities"], by_version[2]["probabilities"])


def test_generic_infer_selects_outputs(api: Api, digit: tuple[np.ndarray, str]) -> None:
    response = api("infer", "digits", {"image": digit[0][None]}, outputs=["labels"])
    assert set(response.outputs) == {"labels"}
    assert response["labels"][0, 0].decode() == digit[1]


def test_generic_infer_with_a_batch(api: Api, split: DigitsSplit) -> None:
    images = np.stack(split.test_images[:4])
    top_k = np.full((4, 1), 2, dtype=np.int32)
    response = api("infer", "digits", {"image": images, "top_k": top_k})
    assert response["labels"].shape == (4, 2)
    assert [row[0].decode() for row in response["labels"]] == [str(t) for t in split.test_y[:4]]
