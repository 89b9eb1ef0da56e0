"""The served `digits` pipeline classifies the held-out split as well as the model offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mlapi_tools.build.digits_data import noise_images
from mlapi_tools.build.digits_models import read_metrics

from .conftest import MODEL_REPOSITORY


def _resized(size: int, resample: Image.Resampling):
    return lambda img: np.asarray(Image.fromarray(img).resize((size, size), resample))


VARIANTS = {
    "8x8": lambda img: img,
    "28x28-bilinear": _resized(28, Image.Resampling.BILINEAR),
    "28x28-nearest": _resized(28, Image.Resampling.NEAREST),
    "200x200-bilinear": _resized(200, Image.Resampling.BILINEAR),
    "inverted": lambda img: 255 - img,
    "inverted-200x200": lambda img: 255 - _resized(200, Image.Resampling.NEAREST)(img),
}


def _classify_all(caller, images):
    """(top label, low_confidence, metadata) of each image, sent one image per request."""
    return [
        (
            int(result.as_numpy("labels")[0, 0]),
            bool(result.as_numpy("low_confidence")[0, 0]),
            json.loads(result.as_numpy("metadata")[0, 0]),
        )
        for result in caller.digits_many(images, top_k=1)
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_held_out_accuracy_matches_offline(caller, split, variant, report_figure):
    images = [VARIANTS[variant](img) for img in split.test_images]
    results = _classify_all(caller, images)
    served_versions = {meta["classifier"]["version"] for _, _, meta in results}
    assert len(served_versions) == 1, served_versions
    offline = read_metrics(MODEL_REPOSITORY, int(served_versions.pop()))["held_out_accuracy"]
    accuracy = float(
        np.mean([label == y for (label, _, _), y in zip(results, split.test_y, strict=True)])
    )
    low_rate = float(np.mean([low for _, low, _ in results]))
    report_figure(
        f"digits {variant} over {caller.protocol}: accuracy",
        f"{accuracy:.4f} (offline {offline:.4f}), low_confidence {low_rate:.3f}",
    )
    assert abs(accuracy - offline) <= 0.01
    assert low_rate <= 0.15
    if variant.startswith("inverted"):
        assert all(meta["preprocessing"]["inverted"] for _, _, meta in results)


def test_noise_and_blank_images_are_low_confidence(caller, split, report_figure):
    noise = noise_images(300, seed=2024, sizes=(8, 28, 200))
    blank = [
        np.full((side, side), level, dtype=np.uint8)
        for side in (8, 28, 200)
        for level in (0, 128, 255)
    ]
    noise_rate = float(np.mean([low for _, low, _ in _classify_all(caller, noise)]))
    blank_results = _classify_all(caller, blank)
    blank_rate = float(np.mean([low for _, low, _ in blank_results]))
    digits_rate = float(
        np.mean([low for _, low, _ in _classify_all(caller, list(split.test_images))])
    )
    report_figure(
        f"low_confidence rate over {caller.protocol}",
        f"noise {noise_rate:.3f}, blank {blank_rate:.3f}, held-out digits {digits_rate:.3f}",
    )
    assert noise_rate >= 0.8
    assert blank_rate == 1.0
    assert digits_rate <= 0.15
    assert all(meta["preprocessing"]["blank"] for _, _, meta in blank_results)
