"""image_ops gives numpy's own results, to the bit, on the shapes normalise_digit uses and edges."""

from __future__ import annotations

import numpy as np
import pytest

from mlapi_backend import image_ops
from mlapi_backend.preprocessing import area_weights

SHAPES = [(3, 3), (3, 200), (64, 64), (64, 37), (128, 90), (5, 128)]


def _images(seed: int = 0):
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        yield rng.random(shape) * 255.0
        # Repeated values and plateaus, as thresholded or flat paper images have.
        yield np.round(rng.random(shape) * 4.0)


@pytest.mark.parametrize("width", [1, 2, 5, 21, 42, 70])
def test_odd_reflect_padding_is_numpys(width):
    for image in _images():
        expected = np.pad(image, width, mode="reflect", reflect_type="odd")
        np.testing.assert_array_equal(image_ops.pad_odd_reflect(image, width), expected)


@pytest.mark.parametrize("width", [1, 2, 3, 21, 64, 130])
def test_symmetric_padding_is_numpys(width):
    for image in _images():
        expected = np.pad(image, width, mode="symmetric")
        np.testing.assert_array_equal(image_ops.pad_symmetric(image, width), expected)


@pytest.mark.parametrize("value", [False, True])
def test_constant_padding_is_numpys(value):
    mask = np.random.default_rng(1).random((17, 40)) > 0.5
    expected = np.pad(mask, 1, constant_values=value)
    np.testing.assert_array_equal(image_ops.pad_constant(mask, value), expected)


def test_median_and_percentiles_are_numpys_bit_for_bit():
    rng = np.random.default_rng(2)
    for size in [1, 2, 3, 4, 7, 252, 253, 4096, 4097]:
        for values in (rng.random(size) * 255.0, np.round(rng.normal(size=size), 1)):
            assert image_ops.median(values) == float(np.median(values))
            for q in [(1.0, 99.0), (99.0,), (50.0,), (0.0, 100.0), (25.0, 75.0)]:
                got = image_ops.percentiles(values, q)
                assert got == [float(v) for v in np.percentile(values, list(q))]


def test_histogram_is_numpys_including_values_on_bin_edges():
    rng = np.random.default_rng(3)
    samples = [rng.random((64, 64)) * 255.0, np.round(rng.random(4096) * 16.0) - 3.0]
    # Values exactly on the edges of 256 bins, the case numpy's bin search corrects for.
    edges = np.linspace(-7.25, 301.5, 257)
    samples.append(np.concatenate([edges, edges[::7] + 1e-12]))
    for values in samples:
        low, high = float(values.min()), float(values.max())
        counts, got_edges = image_ops.histogram(values, 256, low, high)
        expected, expected_edges = np.histogram(values, bins=256, range=(low, high))
        np.testing.assert_array_equal(counts, expected)
        np.testing.assert_array_equal(got_edges, expected_edges)


def test_area_weights_are_cached_read_only_and_large_ones_are_not_kept():
    small = area_weights(80, 20)
    assert area_weights(80, 20) is small
    assert not small.flags.writeable
    with pytest.raises(ValueError):
        small[0, 0] = 1.0
    large = area_weights(4096, 16)
    assert area_weights(4096, 16) is not large
    np.testing.assert_array_equal(area_weights(4096, 16), large)
