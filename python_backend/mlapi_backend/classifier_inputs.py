"""What each classifier version is fed and how its answers are judged.

Versions differ in their input: versions 1 and 2 take scikit-learn-style 8x8 digits (0..16, from
``preprocessing.preprocess_digit``), version 3 takes MNIST-style 28x28 frames (0..1, from
``digit_normalise.normalise_digit``). A version's ``metrics.json`` (written beside its model by
the build) says which: ``input.side`` 28 selects the 28x28 path and then also carries the fitted
low-confidence thresholds. A version without the file, or without ``input``, keeps the 8x8 path
and the model config's ``low_confidence_threshold``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.digit_normalise import OUTPUT_PX, normalise_digit
from mlapi_backend.errors import ModelConfigError
from mlapi_backend.preprocessing import (
    BLANK_CONTRAST,
    OUTPUT_SIDE,
    RANGE_PERCENTILE,
    TRAINING_MAX,
    PreprocessedDigit,
    area_weights,
    preprocess_digit,
)

SCALED_8X8 = "scaled_8x8"
NORMALISED_28X28 = "normalised_28x28"
INPUT_KINDS = {OUTPUT_SIDE: SCALED_8X8, OUTPUT_PX: NORMALISED_28X28}
METRICS_FILE = "metrics.json"
# Pixels the 8x8 path vectorises over at once; an image of this size or more goes alone through
# preprocess_digit. Measured on a busy 2-CPU host (best of 5, vectorised vs preprocess_digit
# image by image): 64 images of 8x8 0.5 vs 7.3 ms, of 28x28 1.2 vs 16.0 ms, of 64x64 4.9 vs
# 15.4 ms, 32 of 128x128 11.8 vs 13.6 ms; larger chunks lost (16 of 256x256 at once: 20.3 vs
# 12.5 ms; the temporaries outgrow the caches).
CHUNK_PIXELS = 2**16


@dataclass(frozen=True)
class VersionProfile:
    """One classifier version's input kind and low-confidence thresholds, and where they came from.

    ``max_not_a_digit`` None: the not-a-digit mass is reported but does not set the flag (the 8x8
    versions, whose reject class was never calibrated for it).
    """

    version: int
    input_kind: str
    min_score: float
    max_not_a_digit: float | None = None
    temperature: float | None = None
    source: str = "config"

    @property
    def input_width(self) -> int:
        """Features per image the classifier takes (64 or 784)."""
        side = OUTPUT_SIDE if self.input_kind == SCALED_8X8 else OUTPUT_PX
        return side * side


def legacy_profile(version: int, threshold: float) -> VersionProfile:
    """Return the profile of a version without metrics: the 8x8 path, the config's threshold."""
    return VersionProfile(version, SCALED_8X8, threshold)


def profile_from_metrics(
    metrics: Mapping[str, Any], version: int, threshold: float, where: str
) -> VersionProfile:
    """Read a version's input kind and thresholds from its parsed metrics.json.

    A 28x28 version must carry ``low_confidence.min_score`` and ``low_confidence.max_not_a_digit``
    in 0..1: serving it with guessed thresholds would make ``low_confidence`` meaningless.
    """
    raw_input = metrics.get("input")
    if raw_input is None:
        return legacy_profile(version, threshold)
    side = raw_input.get("side") if isinstance(raw_input, Mapping) else None
    if side not in INPUT_KINDS:
        raise ModelConfigError(
            f"{where}: 'input.side' must be one of {sorted(INPUT_KINDS)}, got {side!r}"
        )
    kind = INPUT_KINDS[side]
    if kind == SCALED_8X8:
        return VersionProfile(version, kind, threshold, source=where)
    rule = metrics.get("low_confidence")
    if not isinstance(rule, Mapping):
        raise ModelConfigError(
            f"{where}: a {side}x{side} version needs 'low_confidence': "
            "{'min_score': ..., 'max_not_a_digit': ...} (the thresholds fitted by the build)"
        )
    min_score = _fraction(rule, "min_score", where)
    max_not_a_digit = _fraction(rule, "max_not_a_digit", where)
    temperature = metrics.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and temperature > 0):
        raise ModelConfigError(f"{where}: 'temperature' must be a positive number")
    return VersionProfile(
        version,
        kind,
        min_score,
        max_not_a_digit,
        None if temperature is None else float(temperature),
        where,
    )


def _fraction(rule: Mapping[str, Any], key: str, where: str) -> float:
    value = rule.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ModelConfigError(
            f"{where}: 'low_confidence.{key}' must be a number in 0..1, got {value!r}"
        )
    return float(value)


def read_profiles(
    classifier_dir: Path, versions: Sequence[int], threshold: float
) -> dict[int, VersionProfile]:
    """Profiles of the given versions from ``<classifier_dir>/<v>/metrics.json`` where present."""
    profiles = {}
    for version in versions:
        path = classifier_dir / str(version) / METRICS_FILE
        if not path.is_file():
            profiles[version] = legacy_profile(version, threshold)
            continue
        where = f"{classifier_dir.name} version {version} {METRICS_FILE}"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelConfigError(f"{where}: cannot read it: {exc}") from exc
        if not isinstance(metrics, Mapping):
            raise ModelConfigError(f"{where}: expected a JSON object")
        profiles[version] = profile_from_metrics(metrics, version, threshold, where)
    return profiles


@dataclass(frozen=True)
class PreparedImages:
    """One request's images as one version kind's classifier input, with what was done."""

    pixels: NDArray[np.float32]  # [images, 64] or [images, 784]
    metadata: tuple[dict[str, Any], ...]
    # Why an image holds no readable digit, per image (None: it does): "blank" or a flag of
    # normalise_digit.
    flags: tuple[str | None, ...]


def prepare(kind: str, images: NDArray[np.uint8]) -> PreparedImages:
    """Turn a request's validated images [n, height, width] into ``kind``'s classifier input."""
    if kind == SCALED_8X8:
        return scaled_8x8(images)
    if kind == NORMALISED_28X28:
        return normalised_28x28(images)
    raise ValueError(f"unknown input kind {kind!r}")


def scaled_8x8(images: NDArray[np.uint8]) -> PreparedImages:
    """``preprocess_digit`` over a whole request (the images share one size), vectorised.

    The images go in chunks of at most CHUNK_PIXELS pixels: past that one image at a time is
    faster.
    """
    per_chunk = CHUNK_PIXELS // (images.shape[1] * images.shape[2])
    if per_chunk <= 1:  # a large image: preprocess_digit itself, one image at a time
        parts = [_single_8x8(image) for image in images]
    elif len(images) <= per_chunk:
        return _scaled_8x8_chunk(images)
    else:
        parts = [
            _scaled_8x8_chunk(images[i : i + per_chunk]) for i in range(0, len(images), per_chunk)
        ]
    return PreparedImages(
        np.concatenate([p.pixels for p in parts]),
        tuple(m for p in parts for m in p.metadata),
        tuple(f for p in parts for f in p.flags),
    )


def _single_8x8(image: NDArray[np.uint8]) -> PreparedImages:
    digit = preprocess_digit(image, min_side=1, max_side=max(image.shape))
    return PreparedImages(
        digit.pixels[None],
        ({"method": SCALED_8X8, **digit.metadata(), "steps": _8x8_steps(digit)},),
        ("blank" if digit.blank else None,),
    )


def _scaled_8x8_chunk(images: NDArray[np.uint8]) -> PreparedImages:
    """Run preprocess_digit's steps over a batch.

    Polarity from the border against the 1st..99th percentile range, border median removed,
    exact area average to 8x8, brightest cell to 16.
    """
    count, height, width = images.shape
    grey = images.astype(np.float32)
    low, high = np.percentile(grey, [RANGE_PERCENTILE, 100 - RANGE_PERCENTILE], axis=(1, 2))
    inverted = np.median(_borders(grey), axis=1) > (low + high) / 2.0
    grey = np.where(inverted[:, None, None], 255.0 - grey, grey)
    background = np.median(_borders(grey), axis=1)
    ink = np.clip(grey - background[:, None, None], 0.0, None)
    rows = area_weights(height, OUTPUT_SIDE)
    cols = area_weights(width, OUTPUT_SIDE)
    small = rows @ ink.astype(np.float64) @ cols.T
    contrast = small.reshape(count, -1).max(axis=1)
    blank = (ink.reshape(count, -1).max(axis=1) < BLANK_CONTRAST) | (contrast <= 0.0)
    scale = np.where(blank, 0.0, TRAINING_MAX / np.where(blank, 1.0, contrast))
    pixels = (small.reshape(count, -1) * scale[:, None]).astype(np.float32)
    metadata = []
    for i in range(count):
        digit = PreprocessedDigit(
            pixels[i], (height, width), bool(inverted[i]), float(background[i]),
            float(contrast[i]), bool(blank[i]),
        )  # fmt: skip
        metadata.append({"method": SCALED_8X8, **digit.metadata(), "steps": _8x8_steps(digit)})
    flags = tuple("blank" if b else None for b in blank.tolist())
    return PreparedImages(pixels, tuple(metadata), flags)


def _borders(grey: NDArray[np.float32]) -> NDArray[np.float32]:
    """Return the one-pixel frame of every image of a batch [n, h, w] as [n, frame pixels]."""
    return np.concatenate(
        [grey[:, 0, :], grey[:, -1, :], grey[:, 1:-1, 0], grey[:, 1:-1, -1]], axis=1
    )


def _8x8_steps(digit: PreprocessedDigit) -> list[dict[str, Any]]:
    return [
        {"name": "polarity", "inverted": digit.inverted},
        {"name": "background", "level": round(digit.background_level, 2)},
        {"name": "resize", "method": "area_average", "size": [OUTPUT_SIDE, OUTPUT_SIDE]},
        {"name": "contrast", "max": round(digit.contrast, 2), "scaled_to": [0.0, TRAINING_MAX]},
    ]


def normalised_28x28(images: NDArray[np.uint8]) -> PreparedImages:
    """``normalise_digit`` per image (blob labelling does not vectorise), flattened row-major.

    The metadata keeps the fields the 8x8 path has always reported (``inverted``,
    ``background_level``, ``contrast``, ``blank``, ...) next to normalise_digit's own record.
    """
    pixels = np.zeros((len(images), OUTPUT_PX * OUTPUT_PX), dtype=np.float32)
    metadata, flags = [], []
    for i, image in enumerate(images):
        result = normalise_digit(image, min_side=1, max_side=max(image.shape))
        pixels[i] = result.pixels.reshape(-1)
        steps = {step["name"]: step for step in result.metadata["steps"]}
        polarity = steps.get("polarity", {})
        detail = result.metadata.get("flag_detail", {})
        contrast = steps.get("threshold", {}).get("contrast", detail.get("contrast", 0.0))
        metadata.append(
            {
                "method": NORMALISED_28X28,
                "original_size": result.metadata["original_size"],
                "resized_to": [OUTPUT_PX, OUTPUT_PX],
                "resize": "normalise_digit",
                "inverted": bool(polarity.get("inverted", False)),
                "background_level": polarity.get("border_median", 0.0),
                "contrast": contrast,
                "scaled_to": [0.0, 1.0],
                "blank": result.flag == "blank",
                "flag": result.flag,
                "flag_detail": detail,
                "steps": result.metadata["steps"],
            }
        )
        flags.append(result.flag)
    return PreparedImages(pixels, tuple(metadata), tuple(flags))
