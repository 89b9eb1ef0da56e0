"""The 28x28 datasets of digits_classifier version 3: sources, splits, and normalise_digit.

Every sample is a raw image (as a user would send it) passed through the served
``normalise_digit``, so training sees exactly what the model is served: 28x28 float32, ink 1,
paper 0, flattened row-major. Samples it flags are dropped from training and counted as flagged
in the evaluation sets.

Sources and splits (no held-out image, font family or seed is used for training):

- ``handwritten_8x8``: scikit-learn's 8x8 digits. The fixed split of digits_data: its training
  part is cut again into fit (80 %) and calibration (20 %); its held-out part is the test split,
  both clean (upsampled to 8, 16, 28 and 64 px) and augmented.
- ``strokes``: synthetic hand-drawn digits (handwriting.py), one seed stream per split.
- ``fonts``: digits typed in the training font families (fonts.py); the calibration split uses
  the CALIBRATION_GROUPS families, the fit split the other training families, and the test sets
  the held-out families only (clean: dark on white at 20, 40 and 80 px; and augmented).
- ``not_digits``: not_digits.py, glyphs from the same font families as the split.

Each sample's random stream is seeded by (seed, set, index), so the data are the same whatever
the number of worker processes.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.digit_normalise import normalise_digit
from mlapi_backend.preprocessing import digits_to_images
from mlapi_tools.build import augment, digits_data, fonts, handwriting, not_digits

log = logging.getLogger(__name__)

NOT_A_DIGIT = digits_data.NOT_A_DIGIT
SIDE = 28
CALIBRATION_SHARE = 0.2
# Training font families reserved for calibration, so the fitted temperature and thresholds
# see fonts the network has not seen (as the held-out families will be).
CALIBRATION_GROUPS = frozenset({"cantarell", "caladea", "linux"})
CLEAN_8X8_SIDES = (8, 16, 28, 64)
# Of each 8x8 training image's copies, this many are only resampled (to one of these sides, by
# nearest, bilinear or bicubic, either polarity), the others augmented.
CLEAN_8X8_COPIES = 3
TRAIN_8X8_SIDES = (8, 8, 12, 16, 16, 20, 24, 28, 32, 40, 48, 64)
CLEAN_FONT_SIZES = (20, 40, 80)
SET_IDS = {
    "train/handwritten_8x8": 1,
    "train/strokes": 2,
    "train/fonts": 3,
    "train/not_digits": 4,
    "calibration/handwritten_8x8": 5,
    "calibration/strokes": 6,
    "calibration/fonts": 7,
    "calibration/not_digits": 8,
    "test/handwritten_8x8": 9,
    "test/handwritten_8x8_augmented": 10,
    "test/strokes_augmented": 11,
    "test/held_out_fonts": 12,
    "test/held_out_fonts_augmented": 13,
    "test/not_digits": 14,
}


@dataclass(frozen=True)
class Sizes:
    """How many raw images each set draws (clean test sets are enumerated, not sized)."""

    handwritten_copies: int = 7  # copies of each fit image (CLEAN_8X8_COPIES resampled only)
    strokes: int = 9000
    fonts: int = 11000
    not_digits: int = 14000
    calibration_handwritten_copies: int = 3
    calibration_strokes: int = 1500
    calibration_fonts: int = 1500
    calibration_not_digits: int = 4000
    test_handwritten_copies: int = 2
    test_strokes: int = 1500
    test_fonts: int = 1500
    test_not_digits: int = 4000
    cap: int | None = None  # at most this many per set (tests)


TINY = Sizes(1, 60, 60, 80, 1, 20, 20, 40, 1, 20, 20, 40, cap=80)


@dataclass
class Samples:
    """One set after normalise_digit: kept rows, their labels, and how many were flagged."""

    x: NDArray[np.float32]  # (N, 784), ink 1, paper 0
    y: NDArray[np.int64]  # (N,), 0..9 or NOT_A_DIGIT
    flagged: int  # raw images normalise_digit flagged (not in x)
    flagged_by_label: dict[int, int]

    @property
    def drawn(self) -> int:
        """Raw images drawn for the set (kept + flagged)."""
        return len(self.y) + self.flagged


@cache
def _handwritten() -> tuple[
    NDArray[np.float64],
    NDArray[np.int64],
    NDArray[np.float64],
    NDArray[np.int64],
    NDArray[np.float64],
    NDArray[np.int64],
]:
    split = digits_data.load_split()
    rng = np.random.default_rng(digits_data.SPLIT_SEED)
    order = rng.permutation(len(split.train_y))
    n_cal = round(len(order) * CALIBRATION_SHARE)
    cal, fit = order[:n_cal], order[n_cal:]
    return (
        split.train_x[fit] / 16.0,
        split.train_y[fit],
        split.train_x[cal] / 16.0,
        split.train_y[cal],
        split.test_x / 16.0,
        split.test_y,
    )


@cache
def _font_split() -> tuple[tuple[Path, ...], tuple[Path, ...], tuple[Path, ...]]:
    training = fonts.training_fonts()
    cal = tuple(
        p for p in training if fonts.family_group(fonts.family_name(p)) in CALIBRATION_GROUPS
    )
    fit = tuple(p for p in training if p not in cal)
    return fit, cal or fit, tuple(fonts.held_out_fonts())


def _ink_8x8(row: NDArray[np.float64]) -> augment.Ink:
    from PIL import Image

    small = Image.fromarray(row.reshape(8, 8).astype(np.float32), mode="F")
    return (
        np.asarray(small.resize((32, 32), Image.Resampling.BICUBIC)).clip(0, 1).astype(np.float32)
    )


def _typed_ink(rng: np.random.Generator, font_files: tuple[Path, ...], digit: int) -> augment.Ink:
    font = font_files[int(rng.integers(len(font_files)))]
    size = int(rng.integers(24, 97))
    stroke = int(rng.integers(0, 3)) if size >= 48 and rng.random() < 0.2 else 0
    image = fonts.render_digit(font, str(digit), size, stroke_px=stroke)
    return (255.0 - image.astype(np.float32)) / 255.0


def _raw_image(name: str, index: int, seed: int) -> tuple[NDArray[np.uint8], int]:
    """The raw image and label of sample ``index`` of set ``name``."""
    rng = np.random.default_rng([seed, SET_IDS[name], index])
    split, source = name.split("/")
    strength = augment.TRAINING if split != "test" else augment.HELD_OUT
    side = int(rng.integers(24, 129))
    fit_x, fit_y, cal_x, cal_y, test_x, test_y = _handwritten()
    fit_fonts, cal_fonts, held_fonts = _font_split()
    split_fonts = {"train": fit_fonts, "calibration": cal_fonts, "test": held_fonts}[split]
    if source == "handwritten_8x8":
        if split == "test":  # clean: the user's 8x8 image, resampled to a few sides
            image = digits_to_images(test_x[index % len(test_y)][None, :] * 16.0)[0]
            side = CLEAN_8X8_SIDES[index // len(test_y)]
            return _resize(image, side), int(test_y[index % len(test_y)])
        xs, ys = (fit_x, fit_y) if split == "train" else (cal_x, cal_y)
        row = index % len(ys)
        if index < CLEAN_8X8_COPIES * len(ys):  # as users send 8x8 digits: resampled only
            image = digits_to_images(xs[row][None, :] * 16.0)[0]
            side = int(rng.choice(TRAIN_8X8_SIDES))
            image = _resize(image, side, int(rng.integers(3)))
            inverted = rng.random() < 0.5
            return (np.uint8(255) - image if inverted else image), int(ys[row])
        return augment.augment(_ink_8x8(xs[row]), rng, strength, side), int(ys[row])
    if source == "handwritten_8x8_augmented":
        row = index % len(test_y)
        return augment.augment(_ink_8x8(test_x[row]), rng, strength, side), int(test_y[row])
    if source in ("strokes", "strokes_augmented"):
        digit = index % 10
        ink = handwriting.hand_drawn_digit(digit, rng)
        return augment.augment(ink, rng, strength, side), digit
    if source == "held_out_fonts":  # clean: dark on white, as typed
        per_font = 10 * len(CLEAN_FONT_SIZES)
        font = held_fonts[index // per_font]
        digit = (index // len(CLEAN_FONT_SIZES)) % 10
        size = CLEAN_FONT_SIZES[index % len(CLEAN_FONT_SIZES)]
        return fonts.render_digit(font, str(digit), size), digit
    if source in ("fonts", "held_out_fonts_augmented"):
        digit = index % 10
        return augment.augment(_typed_ink(rng, split_fonts, digit), rng, strength, side), digit
    if source == "not_digits":
        return not_digits.not_digit_image(rng, split_fonts, strength)[1], NOT_A_DIGIT
    raise ValueError(f"unknown set {name!r}")


def _resize(image: NDArray[np.uint8], side: int, kind: int = 2) -> NDArray[np.uint8]:
    from PIL import Image

    if image.shape == (side, side):
        return image
    resample = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
    return np.asarray(Image.fromarray(image).resize((side, side), resample[kind]))


def set_counts(sizes: Sizes) -> dict[str, int]:
    """How many raw images each set draws."""
    fit_x, _, cal_x, _, test_x, _ = _handwritten()
    held = len(_font_split()[2])
    counts = {
        "train/handwritten_8x8": len(fit_x) * sizes.handwritten_copies,
        "train/strokes": sizes.strokes,
        "train/fonts": sizes.fonts,
        "train/not_digits": sizes.not_digits,
        "calibration/handwritten_8x8": len(cal_x) * sizes.calibration_handwritten_copies,
        "calibration/strokes": sizes.calibration_strokes,
        "calibration/fonts": sizes.calibration_fonts,
        "calibration/not_digits": sizes.calibration_not_digits,
        "test/handwritten_8x8": len(test_x) * len(CLEAN_8X8_SIDES),
        "test/handwritten_8x8_augmented": len(test_x) * sizes.test_handwritten_copies,
        "test/strokes_augmented": sizes.test_strokes,
        "test/held_out_fonts": held * 10 * len(CLEAN_FONT_SIZES),
        "test/held_out_fonts_augmented": sizes.test_fonts,
        "test/not_digits": sizes.test_not_digits,
    }
    return {name: min(n, sizes.cap) if sizes.cap else n for name, n in counts.items()}


def _normalised_chunk(
    args: tuple[str, int, int, int],
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.bool_]]:
    name, start, stop, seed = args
    xs = np.zeros((stop - start, SIDE * SIDE), np.float32)
    ys = np.zeros(stop - start, np.int64)
    kept = np.zeros(stop - start, np.bool_)
    for i, index in enumerate(range(start, stop)):
        image, label = _raw_image(name, index, seed)
        result = normalise_digit(image)
        ys[i] = label
        if result.flag is None:
            xs[i] = result.pixels.reshape(-1)
            kept[i] = True
    return xs, ys, kept


def build_sets(sizes: Sizes, seed: int, workers: int | None = None) -> dict[str, Samples]:
    """Every set, normalised; ``workers`` processes (default: the CPUs, at most 2)."""
    counts = set_counts(sizes)
    workers = workers or min(2, os.cpu_count() or 1)
    chunk = 500
    jobs = [
        (name, start, min(start + chunk, count), seed)
        for name, count in counts.items()
        for start in range(0, count, chunk)
    ]
    started = time.monotonic()
    parts: dict[str, list[tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.bool_]]]] = {
        name: [] for name in counts
    }
    if workers == 1:
        results = [_normalised_chunk(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_normalised_chunk, jobs))
    for job, result in zip(jobs, results, strict=True):
        parts[job[0]].append(result)
    sets = {}
    for name, chunks in parts.items():
        x = (
            np.concatenate([c[0] for c in chunks])
            if chunks
            else np.zeros((0, SIDE * SIDE), np.float32)
        )
        y = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int64)
        kept = np.concatenate([c[2] for c in chunks]) if chunks else np.zeros(0, np.bool_)
        labels, flagged_counts = np.unique(y[~kept], return_counts=True)
        sets[name] = Samples(
            x[kept],
            y[kept],
            int((~kept).sum()),
            {int(k): int(v) for k, v in zip(labels, flagged_counts, strict=True)},
        )
        log.info(
            "data: %-34s %6d kept, %5d flagged by normalise_digit",
            name,
            len(sets[name].y),
            sets[name].flagged,
        )
    log.info(
        "data: %d raw images normalised in %.1fs (%d workers)",
        sum(counts.values()),
        time.monotonic() - started,
        workers,
    )
    return sets


def split_union(
    sets: dict[str, Samples], split: str
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The kept rows of every set of one split ("train", "calibration"), concatenated."""
    names = [n for n in sets if n.startswith(split + "/")]
    return (
        np.concatenate([sets[n].x for n in names]),
        np.concatenate([sets[n].y for n in names]),
    )


def save_sets(sets: dict[str, Samples], path: Path) -> None:
    """Write every set to one .npz (a cache of build_sets under the build folder)."""
    arrays: dict[str, NDArray[np.generic]] = {}
    for name, s in sets.items():
        arrays[f"{name}:x"] = s.x
        arrays[f"{name}:y"] = s.y
        flagged = np.array([[k, v] for k, v in s.flagged_by_label.items()], np.int64)
        arrays[f"{name}:flagged"] = flagged.reshape(-1, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def load_sets(path: Path) -> dict[str, Samples]:
    """Read what save_sets wrote."""
    with np.load(path) as data:
        names = sorted({key.rsplit(":", 1)[0] for key in data.files}, key=list(SET_IDS).index)
        sets = {}
        for name in names:
            flagged = {int(k): int(v) for k, v in data[f"{name}:flagged"]}
            sets[name] = Samples(
                data[f"{name}:x"], data[f"{name}:y"], sum(flagged.values()), flagged
            )
    return sets
