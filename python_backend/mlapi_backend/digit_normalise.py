"""Real-image digit normalisation: any grayscale photo or scan of one digit -> MNIST-style 28x28.

The steps, each recorded in the metadata (docs/preprocessing.md explains them):

1. ``work_scale``: area-resample so the longer side is at most WORK_SIDE (and small images up to
   MIN_WORK_SIDE), then a 3x3 box blur against JPEG and sensor noise;
2. ``polarity``: the border is paper; ink is made bright;
3. ``illumination``: a paper-only box mean (normalised convolution with cumulative sums) is the
   lighting; subtracting it flattens gradients, shadows and vignettes;
4. ``threshold``: Otsu on the flattened image, never below the paper noise (4 robust sigmas);
5. ``components``: 8-connected labelling of the ink (scipy.ndimage.label); the digit is the
   largest blob that does not touch the border plus the blobs near it; specks are dropped;
6. ``crop`` and ``square_pad``: the kept ink's bounding box, centred on a square canvas;
7. ``stroke``: the stroke width (2 x area / Crofton perimeter) is brought to STROKE_TARGET_PX by
   dilation or erosion at 4x the output scale;
8. ``size``: the digit's box is fitted into BOX_PX x BOX_PX keeping the aspect ratio;
9. ``centre``: the box is placed in the OUTPUT_PX frame with its centre of mass at the centre.

Images with no ink are flagged ``blank``; images whose ink is not one digit-like blob are flagged
``no_blob``, ``too_many_blobs``, ``fills_frame`` or ``too_small``. Flagged results carry zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from mlapi_backend.image_ops import (
    histogram,
    median,
    pad_constant,
    pad_odd_reflect,
    pad_symmetric,
    percentiles,
)
from mlapi_backend.preprocessing import MAX_SIDE, MIN_SIDE, area_resize, validate_image

Floats = NDArray[np.float64]
Mask = NDArray[np.bool_]

OUTPUT_PX = 28
BOX_PX = 20
# Output pixels; MNIST strokes are about 2-3 px wide at this scale.
STROKE_TARGET_PX = 2.5
# The canonical canvas (stroke measurement and morphology) is this many times the output scale.
UPSAMPLE = 4
# Working resolution: 128 px keeps a 20 px box at least 6x oversampled for a digit that covers a
# sixth of the frame, and keeps a 1024x1024 image's steps a few milliseconds.
WORK_SIDE = 128
MIN_WORK_SIDE = 64
# Grey levels (0..255) of ink above the paper below which an image is blank.
BLANK_CONTRAST = 8.0
NOISE_SIGMAS = 4.0
# Components smaller than this share of the working area (and 4 px) are specks.
SPECK_SHARE = 0.0005
# A blob joins the digit if it has this share of the main blob's area and lies within this
# share of the main blob's longer side from its box.
JOIN_AREA_SHARE = 0.05
JOIN_GAP_SHARE = 0.5
# More than MAX_OTHER_BLOBS blobs of OTHER_AREA_SHARE of the digit's area left out, or the digit
# holding under MIN_INK_SHARE of the ink, reads as a texture or a scene, not one digit.
OTHER_AREA_SHARE = 0.15
MAX_OTHER_BLOBS = 3
MIN_INK_SHARE = 0.5
FRAME_SHARE = 0.9
FRAME_FILL = 0.6
MAX_INK_SHARE = 0.5
MIN_BOX_WORK_PX = 8
# Past this many ink runs (row-wise) an image is a texture, flagged before labelling.
MAX_RUNS = 6000

STEP_NAMES = (
    "work_scale",
    "polarity",
    "illumination",
    "threshold",
    "components",
    "crop",
    "square_pad",
    "stroke",
    "size",
    "centre",
)
FLAG_REASONS = ("blank", "no_blob", "too_many_blobs", "fills_frame", "too_small")


@dataclass(frozen=True)
class NormalisedDigit:
    """A 28x28 float32 image (ink 1, paper 0), the flag reason if any, and what each step did."""

    pixels: NDArray[np.float32]
    flag: str | None
    metadata: dict[str, Any]


class _FlaggedError(Exception):
    """Internal: stops the pipeline with a reason and the figures behind it."""

    def __init__(self, reason: str, **figures: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.figures = figures


def box_mean(image: Floats, size: int) -> Floats:
    """Mean over a size x size window (odd size), linear extrapolation beyond the edges.

    Odd reflection makes a linear gradient its own box mean, so lighting ramps leave no residue at
    the border. Two cumulative sums make the cost independent of the window.
    """
    half = size // 2
    padded = pad_odd_reflect(image, half)
    return _box_sum(padded, size) / float(size * size)


def _box_sum(padded: Floats, size: int) -> Floats:
    """Sum over every size x size window of ``padded`` (output shrinks by size - 1)."""
    summed = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1))
    np.cumsum(np.cumsum(padded, axis=0), axis=1, out=summed[1:, 1:])
    out: Floats = (
        summed[size:, size:]
        - summed[:-size, size:]
        - summed[size:, :-size]
        + summed[:-size, :-size]
    )
    return out


def otsu_threshold(values: Floats, bins: int = 256) -> float:
    """Return the threshold that maximises the between-class variance of ``values`` (Otsu)."""
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-9:
        return high
    counts, edges = histogram(values, bins, low, high)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    below, above = weight[:-1], total - weight[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * below - total * mass[:-1]) ** 2 / (below * above)
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


def stroke_width(mask: Mask) -> float:
    """Mean stroke width of a binary drawing in pixels: 2 x area / perimeter.

    The perimeter is Crofton's estimate from boundary crossings along rows, columns and both
    diagonals (within 5% for any stroke direction), so diagonal strokes are not read as thinner.
    """
    area = float(mask.sum())
    if area == 0.0:
        return 0.0
    # Only the ink's bounding box holds crossings: the counts are those of the whole mask.
    rows_in, cols_in = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    ink = pad_constant(mask[rows_in[0] : rows_in[-1] + 1, cols_in[0] : cols_in[-1] + 1], False)
    rows = np.count_nonzero(ink[:, 1:] != ink[:, :-1])
    cols = np.count_nonzero(ink[1:, :] != ink[:-1, :])
    diag = np.count_nonzero(ink[1:, 1:] != ink[:-1, :-1])
    anti = np.count_nonzero(ink[1:, :-1] != ink[:-1, 1:])
    perimeter = math.pi / 8.0 * (rows + cols + (diag + anti) / math.sqrt(2.0))
    return 2.0 * area / perimeter


def _shift_or(mask: Mask, plus_only: bool, grow: bool) -> Mask:
    """One dilation (``grow``) or erosion step with a plus (4-neighbour) or 3x3 square element."""
    padded = pad_constant(mask, not grow)
    height, width = mask.shape
    offsets = [(0, 1), (1, 0), (1, 2), (2, 1)]
    if not plus_only:
        offsets += [(0, 0), (0, 2), (2, 0), (2, 2)]
    out = mask.copy()
    for dy, dx in offsets:
        window = padded[dy : dy + height, dx : dx + width]
        out = out | window if grow else out & window
    return out


def morph(mask: Mask, steps: int) -> Mask:
    """Dilate (steps > 0) or erode (steps < 0) by |steps| pixels, alternating plus and square.

    Alternating the two elements grows an octagon, close enough to a disc that diagonal and
    straight strokes change width alike.
    """
    out = mask
    for index in range(abs(steps)):
        out = _shift_or(out, plus_only=index % 2 == 0, grow=steps > 0)
    return out


@dataclass(frozen=True)
class _Blobs:
    """Per-component figures of an ink mask; component k (0-based) is label k + 1."""

    labels: NDArray[np.int32]  # the mask's label image, 0 off the ink
    area: Floats
    top: NDArray[np.int64]
    bottom: NDArray[np.int64]
    left: NDArray[np.int64]
    right: NDArray[np.int64]
    on_border: NDArray[np.bool_]


# 8-connectivity for scipy.ndimage.label: diagonal neighbours join.
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def label_components(mask: Mask) -> _Blobs:
    """Label the 8-connected components of ``mask`` (scipy.ndimage's compiled labelling).

    Components are numbered in raster order of their first pixel. A mask with more than MAX_RUNS
    runs of ink (row-wise) is a texture and flagged before any labelling.
    """
    height, width = mask.shape
    runs = int(np.count_nonzero(mask[:, 1:] & ~mask[:, :-1])) + int(np.count_nonzero(mask[:, 0]))
    if runs > MAX_RUNS:
        raise _FlaggedError("too_many_blobs", runs=float(runs), max_runs=float(MAX_RUNS))
    labels, count = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
    area = np.bincount(labels.reshape(-1), minlength=count + 1)[1:].astype(np.float64)
    # Boxes from the ink pixels' coordinates (ndimage.find_objects took 4 ms for 1,200 labels).
    flat = labels.reshape(-1)
    index = np.flatnonzero(flat)
    label = flat[index] - 1
    rows, cols = np.divmod(index, width)
    top = np.full(count, height, dtype=np.int64)
    bottom = np.full(count, -1, dtype=np.int64)
    left = np.full(count, width, dtype=np.int64)
    right = np.full(count, -1, dtype=np.int64)
    np.minimum.at(top, label, rows)
    np.maximum.at(bottom, label, rows)
    np.minimum.at(left, label, cols)
    np.maximum.at(right, label, cols)
    on_border = (top == 0) | (bottom == height - 1) | (left == 0) | (right == width - 1)
    return _Blobs(labels, area, top, bottom, left, right, on_border)


def _work_image(image: NDArray[np.uint8]) -> tuple[Floats, dict[str, Any]]:
    height, width = image.shape
    longer = max(height, width)
    scale = 1.0
    if longer > WORK_SIDE:
        scale = WORK_SIDE / longer
    elif longer < MIN_WORK_SIDE:
        scale = MIN_WORK_SIDE / longer
    factor = math.ceil(longer / WORK_SIDE)
    grey = image.astype(np.float64)
    if factor > 1 and height % factor == 0 and width % factor == 0:
        # Whole blocks (1024, 512, 256 px): a block mean is the same area average, 10x cheaper.
        scale = 1.0 / factor
        work = grey.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))
        size = work.shape
    else:
        size = (max(3, round(height * scale)), max(3, round(width * scale)))
        work = grey if scale == 1.0 else area_resize(grey, size[0], size[1])
    # Even reflection here: the odd one would put most of an edge pixel's noise back into it.
    smooth = _box_sum(pad_symmetric(work, 1), 3) / 9.0
    return smooth, {
        "name": "work_scale",
        "scale": round(scale, 4),
        "size": [int(v) for v in size],
        "blur": 3,
    }


def _ring(image: Floats) -> Floats:
    """Return the one-pixel frame of a 2-D image, flat."""
    return np.concatenate([image[0, :], image[-1, :], image[1:-1, 0], image[1:-1, -1]])


def _robust_level(values: Floats) -> tuple[float, float]:
    """Median and robust sigma (1.4826 x median absolute deviation) of ``values``."""
    level = median(values)
    return level, 1.4826 * median(np.abs(values - level))


def _polarity(work: Floats) -> tuple[Floats, dict[str, Any]]:
    # Percentiles keep one stray pixel from deciding; a mark under 1% of the image needs min/max.
    low, high = percentiles(work.reshape(-1), (1.0, 99.0))
    if high - low < BLANK_CONTRAST:
        low, high = float(work.min()), float(work.max())
    paper = median(_ring(work))
    if high - low < BLANK_CONTRAST:
        raise _FlaggedError("blank", contrast=round(high - low, 2), blank_contrast=BLANK_CONTRAST)
    inverted = paper > (low + high) / 2.0
    step = {
        "name": "polarity",
        "inverted": inverted,
        "border_median": round(paper, 2),
        "range_p1_p99": [round(low, 2), round(high, 2)],
    }
    return (255.0 - work if inverted else work), step


def _flatten(ink_bright: Floats) -> tuple[Floats, Mask, dict[str, Any]]:
    """Subtract the lighting: a box mean over paper pixels only, so ink does not darken it."""
    window = max(3, (max(ink_bright.shape) // 3) | 1)
    half = window // 2
    values = pad_odd_reflect(ink_bright, half)  # box_mean's padding, used twice
    residual = ink_bright - _box_sum(values, window) / float(window * window)
    # Paper: below Otsu's split of the residual, unless that split is inside the paper's noise
    # (a blank or noisy page; measured on the border, which is paper), and never much brighter
    # than the border (a large solid blob is not lighting).
    level, sigma = _robust_level(_ring(residual))
    border_high = percentiles(_ring(ink_bright), (99.0,))[0]
    ceiling = border_high + 0.5 * (float(ink_bright.max()) - border_high)
    paper = (residual < max(otsu_threshold(residual), level + 3.0 * sigma)) & (
        ink_bright <= ceiling
    )
    weights = pad_symmetric(paper.astype(np.float64), half)
    with np.errstate(divide="ignore", invalid="ignore"):
        lighting = _box_sum(values * weights, window) / _box_sum(weights, window)
    finite = np.isfinite(lighting)
    if not finite.all():  # windows without paper: the paper's median level
        fallback = median(ink_bright[paper]) if paper.any() else float(ink_bright.min())
        lighting = np.where(finite, lighting, fallback)
    flat = ink_bright - lighting
    spread = float(lighting.max() - lighting.min())
    return (
        flat,
        paper,
        {"name": "illumination", "window": window, "lighting_range": round(spread, 2)},
    )


def _threshold(flat: Floats, paper: Mask) -> tuple[Mask, dict[str, Any]]:
    level, sigma = _robust_level(flat[paper] if paper.any() else flat.reshape(-1))
    contrast = float(flat.max()) - level
    if contrast < BLANK_CONTRAST:
        raise _FlaggedError("blank", contrast=round(contrast, 2), blank_contrast=BLANK_CONTRAST)
    otsu = otsu_threshold(flat)
    threshold = max(otsu, level + NOISE_SIGMAS * sigma, level + BLANK_CONTRAST / 2.0)
    step = {
        "name": "threshold",
        "method": "otsu",
        "otsu": round(otsu, 2),
        "paper_level": round(level, 2),
        "paper_sigma": round(sigma, 2),
        "threshold": round(threshold, 2),
        "contrast": round(contrast, 2),
    }
    return flat > threshold, step


def _box_gap(blobs: _Blobs, index: NDArray[np.int64], main: int) -> NDArray[np.int64]:
    """Chebyshev gap between each blob's box and the main blob's box (0 when they overlap)."""
    gap_y = np.maximum(blobs.top[index] - blobs.bottom[main], blobs.top[main] - blobs.bottom[index])
    gap_x = np.maximum(blobs.left[index] - blobs.right[main], blobs.left[main] - blobs.right[index])
    gap: NDArray[np.int64] = np.maximum(np.maximum(gap_y, gap_x), 0)
    return gap


def _select(mask: Mask) -> tuple[Mask, dict[str, Any]]:
    """Keep the digit's components: the main blob plus blobs near it; flag what is not a digit."""
    height, width = mask.shape
    blobs = label_components(mask)
    min_area = max(4.0, SPECK_SHARE * height * width)
    candidates = np.nonzero(blobs.area >= min_area)[0]
    if len(candidates) == 0:
        raise _FlaggedError("no_blob", components=float(len(blobs.area)), min_area=min_area)
    inner = candidates[~blobs.on_border[candidates]]
    largest = float(blobs.area[candidates].max())
    pool = inner if len(inner) and blobs.area[inner].max() >= 0.25 * largest else candidates
    main = int(pool[np.argmax(blobs.area[pool])])
    main_area = float(blobs.area[main])
    main_side = max(blobs.bottom[main] - blobs.top[main], blobs.right[main] - blobs.left[main]) + 1
    near = _box_gap(blobs, candidates, main) <= JOIN_GAP_SHARE * main_side
    allowed = ~blobs.on_border[candidates] | bool(blobs.on_border[main])
    join = near & allowed & (blobs.area[candidates] >= JOIN_AREA_SHARE * main_area)
    keep = np.zeros(len(blobs.area), dtype=bool)
    keep[candidates[join]] = True
    keep[main] = True
    kept_area = float(blobs.area[keep].sum())
    others = int(
        np.count_nonzero(
            ~keep[candidates] & (blobs.area[candidates] >= OTHER_AREA_SHARE * main_area)
        )
    )
    ink_share = kept_area / float(blobs.area[candidates].sum())
    top, bottom = int(blobs.top[keep].min()), int(blobs.bottom[keep].max())
    left, right = int(blobs.left[keep].min()), int(blobs.right[keep].max())
    box_h, box_w = bottom - top + 1, right - left + 1
    step = {
        "name": "components",
        "connectivity": 8,
        "components": len(blobs.area),
        "kept": int(keep.sum()),
        "min_area_px": round(min_area, 1),
        "ink_share": round(ink_share, 3),
        "other_blobs": others,
        "main_touches_border": bool(blobs.on_border[main]),
    }
    if others > MAX_OTHER_BLOBS or ink_share < MIN_INK_SHARE:
        raise _FlaggedError(
            "too_many_blobs", other_blobs=float(others), ink_share=round(ink_share, 3)
        )
    fill = kept_area / float(box_h * box_w)
    frame = min(box_h / height, box_w / width)
    if kept_area > MAX_INK_SHARE * height * width or (frame >= FRAME_SHARE and fill >= FRAME_FILL):
        raise _FlaggedError("fills_frame", frame_share=round(frame, 3), box_fill=round(fill, 3))
    if max(box_h, box_w) < MIN_BOX_WORK_PX:
        raise _FlaggedError(
            "too_small", box_px=float(max(box_h, box_w)), min_box_px=MIN_BOX_WORK_PX
        )
    keep_label = np.concatenate(([False], keep))  # label 0 is paper
    digit = keep_label[blobs.labels[top : bottom + 1, left : right + 1]]
    return digit, step | {"box": [top, left, box_h, box_w]}


def _canonical(digit: Mask) -> tuple[Mask, int, dict[str, Any]]:
    """Resample the crop so its longer side is BOX_PX * UPSAMPLE, centred on a padded square."""
    box_h, box_w = digit.shape
    target = BOX_PX * UPSAMPLE
    scale = target / max(box_h, box_w)
    size_h, size_w = max(1, round(box_h * scale)), max(1, round(box_w * scale))
    resized = area_resize(digit.astype(np.float64), size_h, size_w) >= 0.5
    margin = target // 2
    side = target + 2 * margin
    square = np.zeros((side, side), dtype=bool)
    y0, x0 = (side - size_h) // 2, (side - size_w) // 2
    square[y0 : y0 + size_h, x0 : x0 + size_w] = resized
    return square, margin, {"name": "square_pad", "side_px": side, "scale": round(scale, 4)}


def _normalise_stroke(square: Mask, margin: int) -> tuple[Mask, dict[str, Any]]:
    """Dilate or erode so the stroke is STROKE_TARGET_PX wide once the box is BOX_PX again.

    Growing every stroke by 2r also grows the box by 2r, so r solves
    (w + 2r) * L / (L + 2r) = T for box side L, measured width w and target T (canonical pixels).
    """
    side_canon = float(BOX_PX * UPSAMPLE)
    measured = stroke_width(square)
    target = STROKE_TARGET_PX * UPSAMPLE
    steps = round((target - measured) / (1.0 - target / side_canon) / 2.0)
    steps = max(-margin, min(margin, steps))
    area = float(square.sum())
    out = morph(square, steps)
    # Erosion must thin the digit, not remove it: back off until most of it survives.
    while steps < 0 and float(out.sum()) < 0.2 * area:
        steps = -(abs(steps) // 2)
        out = morph(square, steps)
    step = {
        "name": "stroke",
        "measured_px": round(measured / UPSAMPLE, 3),
        "target_px": STROKE_TARGET_PX,
        "morph_steps": steps,
        "operation": "dilate" if steps > 0 else "erode" if steps < 0 else "none",
    }
    return out, step


def _fit_and_centre(shape: Mask) -> tuple[NDArray[np.float32], dict[str, Any], dict[str, Any]]:
    rows, cols = np.flatnonzero(shape.any(axis=1)), np.flatnonzero(shape.any(axis=0))
    crop = shape[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64)
    fine = BOX_PX * UPSAMPLE
    scale = fine / max(crop.shape)
    size_h, size_w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    patch = area_resize(crop, size_h, size_w)
    size_step = {
        "name": "size",
        "box_px": BOX_PX,
        "digit_px": [size_h / UPSAMPLE, size_w / UPSAMPLE],
    }
    mass = patch.sum()
    com_y = float((patch.sum(axis=1) * np.arange(size_h)).sum() / mass)
    com_x = float((patch.sum(axis=0) * np.arange(size_w)).sum() / mass)
    frame = OUTPUT_PX * UPSAMPLE
    centre = (frame - 1) / 2.0
    y0, x0 = round(centre - com_y), round(centre - com_x)
    # The patch placed at (y0, x0) in the frame; what falls outside it is clipped.
    inside = np.zeros((frame, frame))
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(frame, y0 + size_h), min(frame, x0 + size_w)
    if bottom > top and right > left:
        inside[top:bottom, left:right] = patch[top - y0 : bottom - y0, left - x0 : right - x0]
    clipped = 1.0 - float(inside.sum()) / float(mass)
    out = inside.reshape(OUTPUT_PX, UPSAMPLE, OUTPUT_PX, UPSAMPLE).mean(axis=(1, 3))
    centre_step = {
        "name": "centre",
        "method": "centre_of_mass",
        "offset_px": [y0 / UPSAMPLE, x0 / UPSAMPLE],
        "clipped_ink_share": round(clipped, 4),
    }
    return np.clip(out, 0.0, 1.0).astype(np.float32), size_step, centre_step


def normalise_digit(
    image: NDArray[np.uint8], min_side: int = MIN_SIDE, max_side: int = MAX_SIDE
) -> NormalisedDigit:
    """Find, crop and normalise the one digit in a grayscale image (see the module docstring).

    Raises InvalidInputError for anything but a 2-D uint8 image with sides in the bounds; an
    image without one digit-like blob is not an error but a result with ``flag`` set.
    """
    validate_image(image, min_side=min_side, max_side=max_side)
    steps: list[dict[str, Any]] = []
    metadata: dict[str, Any] = {
        "original_size": [int(image.shape[0]), int(image.shape[1])],
        "output_size": [OUTPUT_PX, OUTPUT_PX],
        "steps": steps,
        "flag": None,
    }
    try:
        work, step = _work_image(image)
        steps.append(step)
        ink_bright, step = _polarity(work)
        steps.append(step)
        flat, paper, step = _flatten(ink_bright)
        steps.append(step)
        mask, step = _threshold(flat, paper)
        steps.append(step)
        digit, step = _select(mask)
        steps.append(step)
        steps.append({"name": "crop", "size_px": list(digit.shape)})
        square, margin, step = _canonical(digit)
        steps.append(step)
        shaped, step = _normalise_stroke(square, margin)
        steps.append(step)
        pixels, size_step, centre_step = _fit_and_centre(shaped)
        steps += [size_step, centre_step]
    except _FlaggedError as flagged:
        metadata["flag"] = flagged.reason
        metadata["flag_detail"] = flagged.figures
        return NormalisedDigit(
            np.zeros((OUTPUT_PX, OUTPUT_PX), np.float32), flagged.reason, metadata
        )
    return NormalisedDigit(pixels, None, metadata)
