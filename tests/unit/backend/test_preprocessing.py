from __future__ import annotations

import numpy as np
import pytest

from mlapi_backend.errors import InvalidInputError
from mlapi_backend.preprocessing import (
    MAX_SIDE,
    area_resize,
    area_weights,
    digits_to_images,
    preprocess_digit,
    validate_image,
)


def _digit() -> np.ndarray:
    """A synthetic '1': a bright vertical bar on a dark 8x8 background."""
    img = np.zeros((8, 8), dtype=np.uint8)
    img[1:7, 3:5] = 255
    return img


@pytest.mark.parametrize(
    ("size_in", "size_out"), [(8, 8), (16, 8), (28, 8), (200, 8), (1024, 8), (9, 8)]
)
def test_area_weights_rows_sum_to_one_and_preserve_mass(size_in, size_out):
    weights = area_weights(size_in, size_out)
    assert weights.shape == (size_out, size_in)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    # Every input pixel is fully distributed: total mass is preserved by averaging.
    np.testing.assert_allclose(weights.sum(axis=0) * size_in / size_out, 1.0)


def test_area_resize_matches_block_mean_for_integer_factor():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 24)).astype(np.float64)
    expected = image.reshape(8, 4, 8, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(area_resize(image, 8, 8), expected)


@pytest.mark.parametrize(("height", "width"), [(28, 28), (13, 30), (9, 8)])
def test_area_resize_matches_supersampled_block_mean_for_fractional_factor(height, width):
    # Oracle: upsample by 8 (each pixel -> 8x8 copies); then every output cell is an exact block.
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (height, width)).astype(np.float64)
    fine = np.kron(image, np.ones((8, 8)))
    expected = fine.reshape(8, height, 8, width).mean(axis=(1, 3))
    np.testing.assert_allclose(area_resize(image, 8, 8), expected)


def test_identity_at_8x8_for_training_digits():
    rng = np.random.default_rng(2)
    grid = rng.integers(0, 17, (20, 8, 8)).astype(np.float32)
    grid[:, [0, -1], :] = 0  # background on the border, as in the dataset
    grid[:, :, [0, -1]] = 0
    grid[:, 3, 3] = 16  # full-range ink
    rows = grid.reshape(20, 64)
    for row, image in zip(rows, digits_to_images(rows), strict=True):
        result = preprocess_digit(image)
        np.testing.assert_allclose(result.pixels, row, atol=16 / 255)
        assert not result.inverted and not result.blank


def test_inverted_image_gives_same_pixels_and_is_reported():
    image = _digit()
    normal = preprocess_digit(image)
    inverted = preprocess_digit(255 - image)
    assert inverted.inverted and not normal.inverted
    np.testing.assert_allclose(inverted.pixels, normal.pixels)


def test_upscaled_by_integer_factor_gives_same_pixels():
    image = _digit()
    big = np.kron(image, np.ones((25, 25), dtype=np.uint8))
    result = preprocess_digit(big)
    assert result.original_size == (200, 200)
    np.testing.assert_allclose(result.pixels, preprocess_digit(image).pixels, atol=1e-5)


def test_grey_background_is_removed_and_contrast_stretched():
    image = np.full((16, 16), 100, dtype=np.uint8)
    image[2:14, 6:10] = 180
    result = preprocess_digit(image)
    assert result.background_level == 100
    assert result.pixels.max() == pytest.approx(16.0)
    assert result.pixels.min() == 0.0


@pytest.mark.parametrize("level", [0, 77, 255])
def test_flat_image_is_blank(level):
    result = preprocess_digit(np.full((30, 40), level, dtype=np.uint8))
    assert result.blank
    assert not result.pixels.any()


def test_non_square_image_keeps_original_size_in_metadata():
    image = np.zeros((40, 12), dtype=np.uint8)
    image[5:35, 4:8] = 255
    result = preprocess_digit(image)
    meta = result.metadata()
    assert meta["original_size"] == [40, 12]
    assert meta["resized_to"] == [8, 8]
    assert result.pixels.shape == (64,) and result.pixels.dtype == np.float32


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((8, 8), dtype=np.float32), "UINT8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), "2-D"),
        (np.zeros((64,), dtype=np.uint8), "2-D"),
        (np.zeros((0, 8), dtype=np.uint8), "0x8"),
        (np.zeros((7, 8), dtype=np.uint8), "7x8"),
        (np.zeros((8, MAX_SIDE + 1), dtype=np.uint8), f"8x{MAX_SIDE + 1}"),
    ],
)
def test_invalid_images_are_rejected_with_field_and_detail(image, fragment):
    with pytest.raises(InvalidInputError) as info:
        validate_image(image)
    assert info.value.field == "image"
    assert fragment in str(info.value)


def test_largest_allowed_image_is_accepted():
    image = np.zeros((MAX_SIDE, MAX_SIDE), dtype=np.uint8)
    image[100:900, 450:550] = 255
    result = preprocess_digit(image)
    assert not result.blank and result.pixels.max() == pytest.approx(16.0)


def test_stray_pixel_does_not_flip_polarity():
    # Dark ink on grey paper with one white speck: still dark ink, inverted once.
    paper = np.full((64, 64), 100, dtype=np.uint8)
    paper[10:54, 28:36] = 0
    paper[5, 5] = 255
    result = preprocess_digit(paper)
    assert result.inverted
    assert result.pixels.max() == pytest.approx(16.0) and result.contrast >= 50
    # Light ink on grey paper with one black speck: not inverted.
    light = np.full((64, 64), 150, dtype=np.uint8)
    light[10:54, 28:36] = 255
    light[5, 5] = 0
    assert not preprocess_digit(light).inverted


def test_thin_stroke_on_large_image_is_not_blank():
    image = np.zeros((1024, 1024), dtype=np.uint8)
    image[200:824, 511] = 255  # a one-pixel stroke
    result = preprocess_digit(image)
    assert not result.blank
    assert result.pixels.max() == pytest.approx(16.0)


def test_faint_gradient_is_blank():
    ramp = np.tile(np.linspace(100, 102, 40), (40, 1)).round().astype(np.uint8)
    assert preprocess_digit(ramp).blank
