"""Per-version classifier inputs: profiles from metrics.json and the two preparations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlapi_backend.classifier_inputs import (
    NORMALISED_28X28,
    SCALED_8X8,
    prepare,
    profile_from_metrics,
    read_profiles,
)
from mlapi_backend.digit_normalise import normalise_digit
from mlapi_backend.errors import ModelConfigError
from mlapi_backend.preprocessing import preprocess_digit

V3_METRICS = {
    "temperature": 1.7,
    "low_confidence": {"min_score": 0.6, "max_not_a_digit": 0.3},
    "input": {"side": 28},
}


def _stroke_images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Bars of random place, width and level on a random paper level, either polarity."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, height, width), dtype=np.uint8)
    for i in range(count):
        paper, ink = (int(v) for v in rng.choice(256, 2, replace=False))
        img = np.full((height, width), paper, dtype=np.uint8)
        top, left = rng.integers(1, height // 3), rng.integers(1, width // 3)
        img[top : height - top, left : left + max(1, width // 5)] = ink
        img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        images[i] = img
    return images


# One chunk, several chunks (200x120: 2 images a chunk), one image at a time (300x260).
@pytest.mark.parametrize(("height", "width"), [(8, 8), (28, 28), (37, 53), (200, 120), (300, 260)])
def test_scaled_8x8_over_a_batch_is_preprocess_digit_per_image(height, width):
    images = _stroke_images(6, height, width, seed=height * width)
    images[2] = 255 - images[2]
    images[3] = 128  # blank
    prepared = prepare(SCALED_8X8, images)
    assert prepared.pixels.shape == (6, 64) and prepared.pixels.dtype == np.float32
    for i, image in enumerate(images):
        single = preprocess_digit(image)
        np.testing.assert_allclose(prepared.pixels[i], single.pixels, rtol=1e-5, atol=1e-4)
        meta = prepared.metadata[i]
        assert meta["inverted"] == single.inverted and meta["blank"] == single.blank
        assert meta["background_level"] == round(single.background_level, 2)
        assert meta["contrast"] == pytest.approx(round(single.contrast, 2), abs=0.011)
        assert meta["method"] == SCALED_8X8
        assert [step["name"] for step in meta["steps"]] == [
            "polarity",
            "background",
            "resize",
            "contrast",
        ]
    assert prepared.flags[3] == "blank" and prepared.metadata[3]["blank"]
    assert [f for i, f in enumerate(prepared.flags) if i != 3] == [None] * 5


def test_normalised_28x28_is_normalise_digit_flattened_with_the_old_fields():
    digit = np.full((64, 64), 240, dtype=np.uint8)
    digit[12:52, 30:36] = 20  # a dark "1" on light paper
    images = np.stack([digit, np.full((64, 64), 200, dtype=np.uint8)])
    prepared = prepare(NORMALISED_28X28, images)
    assert prepared.pixels.shape == (2, 784) and prepared.pixels.dtype == np.float32
    reference = normalise_digit(digit)
    np.testing.assert_array_equal(prepared.pixels[0], reference.pixels.reshape(-1))
    assert prepared.flags == (None, "blank")
    readable, blank = prepared.metadata
    assert readable["steps"] == reference.metadata["steps"]
    assert readable["inverted"] is True and readable["blank"] is False
    assert readable["original_size"] == [64, 64] and readable["resized_to"] == [28, 28]
    assert readable["contrast"] > 100 and readable["flag"] is None
    assert (
        blank["blank"] is True and blank["flag"] == "blank" and "contrast" in blank["flag_detail"]
    )
    assert not prepared.pixels[1].any()
    json.dumps(prepared.metadata)  # travels in the metadata string


def test_prepare_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown input kind"):
        prepare("sixteen", np.zeros((1, 8, 8), dtype=np.uint8))


def test_a_28_version_takes_its_thresholds_and_temperature_from_metrics():
    profile = profile_from_metrics(V3_METRICS, 3, 0.5, "v3 metrics.json")
    assert (profile.input_kind, profile.min_score, profile.max_not_a_digit) == (
        NORMALISED_28X28,
        0.6,
        0.3,
    )
    assert profile.temperature == 1.7 and profile.input_width == 784
    assert profile.source == "v3 metrics.json"


def test_metrics_without_input_keep_the_8x8_path_and_the_config_threshold():
    profile = profile_from_metrics({"held_out_accuracy": 0.97}, 2, 0.5, "v2")
    assert (profile.input_kind, profile.min_score, profile.max_not_a_digit) == (
        SCALED_8X8,
        0.5,
        None,
    )
    assert profile.input_width == 64 and profile.source == "config"


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"input": {"side": 16}}, "input.side"),
        ({"input": 28}, "input.side"),
        ({"input": {"side": 28}}, "needs 'low_confidence'"),
        ({"input": {"side": 28}, "low_confidence": {"min_score": 0.5}}, "max_not_a_digit"),
        (
            {"input": {"side": 28}, "low_confidence": {"min_score": 1.5, "max_not_a_digit": 0.1}},
            "min_score",
        ),
        ({**V3_METRICS, "temperature": -1}, "temperature"),
    ],
)
def test_a_28_version_without_usable_thresholds_fails_clearly(metrics, message):
    with pytest.raises(ModelConfigError, match=message) as raised:
        profile_from_metrics(metrics, 3, 0.5, "digits_classifier version 3 metrics.json")
    assert "version 3 metrics.json" in str(raised.value)


def test_read_profiles_from_version_folders(tmp_path):
    for version, metrics in ((1, {"held_out_accuracy": 0.96}), (3, V3_METRICS)):
        (tmp_path / str(version)).mkdir()
        (tmp_path / str(version) / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "2").mkdir()  # built without metrics: today's behaviour
    profiles = read_profiles(tmp_path, [1, 2, 3], 0.4)
    assert {v: p.input_kind for v, p in profiles.items()} == {
        1: SCALED_8X8,
        2: SCALED_8X8,
        3: NORMALISED_28X28,
    }
    assert profiles[2].min_score == 0.4 and profiles[3].min_score == 0.6
    (tmp_path / "3" / "metrics.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match=r"version 3 metrics\.json: cannot read"):
        read_profiles(tmp_path, [3], 0.4)
