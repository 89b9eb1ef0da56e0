"""Bit-identical stand-ins for the numpy calls digit normalisation makes many times per image.

``np.pad``, ``np.median``, ``np.percentile`` and ``np.histogram`` spend most of their time on
argument handling when the arrays are small (a 64x64 working image): each call costs 10-60 us
before any arithmetic. These do the same arithmetic in the same order, so their results are the
same floats (tests/unit/backend/test_image_ops.py compares them with numpy's on random data).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]


def pad_odd_reflect(image: Floats, width: int) -> Floats:
    """``np.pad(image, width, mode="reflect", reflect_type="odd")`` of a 2-D float image."""
    height, cols = image.shape
    if width <= 0:
        return image.copy()
    if width >= height or width >= cols:  # numpy reflects repeatedly: leave that case to it
        out: Floats = np.pad(image, width, mode="reflect", reflect_type="odd")
        return out
    rows = np.empty((height + 2 * width, cols), dtype=image.dtype)
    rows[width : width + height] = image
    # numpy pads axis 0 first, then axis 1 over the row-padded array (corners included).
    rows[:width] = 2 * image[0] - image[width:0:-1]
    rows[width + height :] = 2 * image[-1] - image[-2 : -width - 2 : -1]
    padded = np.empty((height + 2 * width, cols + 2 * width), dtype=image.dtype)
    padded[:, width : width + cols] = rows
    padded[:, :width] = 2 * rows[:, :1] - rows[:, width:0:-1]
    padded[:, width + cols :] = 2 * rows[:, -1:] - rows[:, -2 : -width - 2 : -1]
    return padded


def pad_symmetric(image: Floats, width: int) -> Floats:
    """``np.pad(image, width, mode="symmetric")`` of a 2-D image (edge pixel repeated)."""
    height, cols = image.shape
    if width <= 0:
        return image.copy()
    if width > height or width > cols:
        out: Floats = np.pad(image, width, mode="symmetric")
        return out
    padded = np.empty((height + 2 * width, cols + 2 * width), dtype=image.dtype)
    core = padded[width : width + height]
    core[:, width : width + cols] = image
    core[:, :width] = image[:, width - 1 :: -1] if width else image[:, :0]
    core[:, width + cols :] = image[:, : -width - 1 : -1]
    padded[:width] = core[width - 1 :: -1]
    padded[width + height :] = core[: -width - 1 : -1]
    return padded


def pad_constant(mask: NDArray[np.bool_], value: bool) -> NDArray[np.bool_]:
    """``np.pad(mask, 1, constant_values=value)`` of a 2-D boolean mask."""
    height, width = mask.shape
    padded = np.full((height + 2, width + 2), value, dtype=np.bool_)
    padded[1 : height + 1, 1 : width + 1] = mask
    return padded


def median(values: Floats) -> float:
    """``float(np.median(values))`` of a non-empty 1-D float64 array without NaNs."""
    count = values.size
    half = count // 2
    if count % 2:
        return float(np.partition(values, half)[half])
    part = np.partition(values, (half - 1, half))
    return float((part[half - 1] + part[half]) / 2.0)


def percentiles(values: Floats, q: tuple[float, ...]) -> list[float]:
    """``np.percentile(values, q)`` (method "linear") of a non-empty 1-D float64 array."""
    count = values.size
    virtual = (count - 1) * np.true_divide(np.asarray(q, dtype=np.float64), 100)
    previous = np.floor(virtual)
    gamma = virtual - previous
    low = previous.astype(np.intp)
    high = np.minimum(low + 1, count - 1)
    part = np.partition(values, np.unique(np.concatenate((low, high))))
    a, b = part[low], part[high]
    diff = b - a
    result = a + diff * gamma
    upper = gamma >= 0.5
    result[upper] = b[upper] - diff[upper] * (1 - gamma[upper])
    return [float(v) for v in result]


def histogram(
    values: Floats, bins: int, low: float, high: float
) -> tuple[NDArray[np.int64], Floats]:
    """``np.histogram(values, bins, range=(low, high))`` for low < high.

    Every value must lie in [low, high] (the caller's min and max); numpy's own bin search is
    repeated step by step, so the counts match it at the edges too.
    """
    values = values.reshape(-1)
    edges = np.linspace(low, high, bins + 1, endpoint=True)
    index = ((values - low) / (high - low) * bins).astype(np.intp)
    index[index == bins] -= 1
    index[values < edges[index]] -= 1
    index[(values >= edges[index + 1]) & (index != bins - 1)] += 1
    counts: NDArray[np.int64] = np.bincount(index, minlength=bins)
    return counts, edges
