"""Digit-image preprocessing: any-size grayscale image in either polarity -> the classifier's 8x8 input.

The classifiers are trained on scikit-learn's digits data: 8x8 images whose pixels count how many
of a 4x4 block of a 32x32 bitmap carry ink (0..16, ink high, background 0). Preprocessing maps a
real image onto that distribution:

1. polarity: the border of a digit image is background; if the border is brighter than the
   middle of the image's range (1st..99th percentile), the ink is dark and the image is inverted;
2. background removal: the border's median level is subtracted (clipped at 0);
3. exact area averaging down to 8x8 (each output pixel is the mean of the input area it covers,
   with fractional weights when the size is not a multiple of 8, like PIL's BOX filter);
4. contrast scaling: the brightest cell maps to 16 (the training maximum). An image with
   (almost) no ink at full resolution is *blank*: its pixels are all zero and it is flagged.

Known limit: a digit whose ink covers most of the image border (e.g. a tightly cropped "0")
can be read with the wrong polarity; leave a margin around the digit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.errors import InvalidInputError

OUTPUT_SIDE = 8
TRAINING_MAX = 16.0
# Default image side bounds; the digits model's config overrides them (min_side_px,
# max_side_px), and the gateway reads them from there. SIDE_CEILING bounds what a config may set:
# the resize matrices grow with the side.
MIN_SIDE = 8
MAX_SIDE = 1024
SIDE_CEILING = 4096
# Ink level (0..255 grey levels above the background, at full resolution) below which an image
# is blank: flat images and faint gradients of a level or two, not any visible stroke.
BLANK_CONTRAST = 3.0
# Percentiles that bound the image's grey range for polarity detection.
RANGE_PERCENTILE = 1.0
# Resize matrices kept for reuse: normalise_digit resamples to a few fixed sizes, and building a
# 80x80 matrix took 50 us on a busy 2-CPU host, as long as using it. At most 256 of up to 32K
# cells (256 KiB) each, so a caller sending many sizes holds at most 64 MiB.
CACHED_WEIGHTS = 256
CACHED_WEIGHTS_MAX_CELLS = 2**15


@dataclass(frozen=True)
class PreprocessedDigit:
    """The classifier input for one image plus a record of what was done to produce it."""

    pixels: NDArray[np.float32]  # shape (64,), range 0..16
    original_size: tuple[int, int]
    inverted: bool
    background_level: float
    contrast: float
    blank: bool

    def metadata(self) -> dict[str, Any]:
        return {
            "original_size": list(self.original_size),
            "resized_to": [OUTPUT_SIDE, OUTPUT_SIDE],
            "resize": "area_average",
            "inverted": self.inverted,
            "background_level": round(self.background_level, 2),
            "contrast": round(self.contrast, 2),
            "scaled_to": [0.0, TRAINING_MAX],
            "blank": self.blank,
        }


def validate_image(
    image: NDArray[Any], field: str = "image", min_side: int = MIN_SIDE, max_side: int = MAX_SIDE
) -> None:
    """Raise InvalidInputError unless ``image`` is a 2-D uint8 array with sides in the bounds."""
    if image.dtype != np.uint8:
        raise InvalidInputError(field, "UINT8 pixels", f"{image.dtype}")
    if image.ndim != 2:
        raise InvalidInputError(
            field, "a 2-D grayscale image [height, width]", f"shape {image.shape}"
        )
    height, width = image.shape
    if min(height, width) < min_side or max(height, width) > max_side:
        raise InvalidInputError(
            field,
            f"height and width between {min_side} and {max_side} pixels",
            f"{height}x{width}",
        )


def area_weights(size_in: int, size_out: int) -> NDArray[np.float64]:
    """Matrix W (size_out x size_in) such that W @ v is the exact area average of v.

    Output cell i covers the input interval [i*s, (i+1)*s) with s = size_in / size_out; each input
    pixel j contributes the length of its overlap with that interval, divided by s. Read-only:
    small matrices are cached, since the same few sizes recur for every image.
    """
    if size_in * size_out <= CACHED_WEIGHTS_MAX_CELLS:
        return _cached_area_weights(size_in, size_out)
    return _area_weights(size_in, size_out)


@lru_cache(maxsize=CACHED_WEIGHTS)
def _cached_area_weights(size_in: int, size_out: int) -> NDArray[np.float64]:
    return _area_weights(size_in, size_out)


def _area_weights(size_in: int, size_out: int) -> NDArray[np.float64]:
    scale = size_in / size_out
    starts = np.arange(size_out)[:, None] * scale
    ends = starts + scale
    pixel_lo = np.arange(size_in)[None, :]
    overlap: NDArray[np.float64] = np.clip(
        np.minimum(ends, pixel_lo + 1) - np.maximum(starts, pixel_lo), 0.0, None
    )
    weights: NDArray[np.float64] = overlap / scale
    weights.setflags(write=False)
    return weights


def area_resize(image: NDArray[Any], height: int, width: int) -> NDArray[np.float64]:
    """Area-average ``image`` (2-D) to ``height`` x ``width`` (float64); works for up- or downscale."""
    rows = area_weights(image.shape[0], height)
    cols = area_weights(image.shape[1], width)
    resized: NDArray[np.float64] = rows @ image.astype(np.float64) @ cols.T
    return resized


def border_pixels(image: NDArray[np.float32]) -> NDArray[np.float32]:
    """Return the one-pixel frame of a 2-D image, as a flat array."""
    return np.concatenate([image[0, :], image[-1, :], image[1:-1, 0], image[1:-1, -1]])


def preprocess_digit(
    image: NDArray[np.uint8], min_side: int = MIN_SIDE, max_side: int = MAX_SIDE
) -> PreprocessedDigit:
    """Turn one grayscale image (sides in the bounds) into the classifier's (64,) float32 input."""
    validate_image(image, min_side=min_side, max_side=max_side)
    grey = image.astype(np.float32)
    # Percentiles, not min/max: one stray pixel must not decide the polarity.
    low, high = (float(v) for v in np.percentile(grey, [RANGE_PERCENTILE, 100 - RANGE_PERCENTILE]))
    inverted = float(np.median(border_pixels(grey))) > (low + high) / 2.0
    if inverted:
        grey = 255.0 - grey
    background = float(np.median(border_pixels(grey)))
    ink = np.clip(grey - background, 0.0, None)
    small = area_resize(ink, OUTPUT_SIDE, OUTPUT_SIDE)
    contrast = float(small.max())
    # Blankness is judged at full resolution: averaging a thin stroke on a large image down
    # to 8x8 shrinks its level, but it is still ink.
    blank = float(ink.max()) < BLANK_CONTRAST or contrast <= 0.0
    if blank:
        pixels = np.zeros(OUTPUT_SIDE * OUTPUT_SIDE, dtype=np.float32)
    else:
        pixels = (small / contrast * TRAINING_MAX).astype(np.float32).reshape(-1)
    return PreprocessedDigit(
        pixels=pixels,
        original_size=(int(image.shape[0]), int(image.shape[1])),
        inverted=inverted,
        background_level=background,
        contrast=contrast,
        blank=blank,
    )


def digits_to_images(pixels: NDArray[Any]) -> NDArray[np.uint8]:
    """scikit-learn digits rows (N, 64) in 0..16 -> uint8 images (N, 8, 8), ink bright.

    The inverse of the training-range scaling, used to feed the dataset through the served
    pipeline exactly as a user's image would go.
    """
    scaled = np.rint(np.asarray(pixels, dtype=np.float64) * (255.0 / TRAINING_MAX))
    images: NDArray[np.uint8] = scaled.clip(0, 255).astype(np.uint8)
    return images.reshape(-1, OUTPUT_SIDE, OUTPUT_SIDE)
