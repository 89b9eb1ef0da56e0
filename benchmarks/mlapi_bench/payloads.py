"""Request payloads for the models the harness knows, built from the held-out digits.

Each payload is one request of batch size 1 (what a user of the public API sends). A small pool
of distinct payloads is cycled so that no cache or branch predictor sees a single input.
"""

from __future__ import annotations

from functools import cache

import numpy as np

IDENTITY_MODEL = "bench_identity"
POOL_SIZE = 16
PAYLOAD_MODELS = ("digits", "digits_classifier", IDENTITY_MODEL)
# The version a model's payloads are made for when a load names none. digits_classifier's
# payloads are 8x8 pixel rows (64 features): versions 1 and 2; its latest version, 3, takes
# 28x28 frames, so an unversioned request with them would fail.
PAYLOAD_VERSIONS = {"digits_classifier": "2"}


def payload_version(model: str, version: str = "") -> str | None:
    """The version to request: ``version``, else the one ``model``'s payloads are made for."""
    return version or PAYLOAD_VERSIONS.get(model)


@cache
def _held_out(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels float32 (N, 64) in 0..16, images uint8 (N, 8, 8)) of the fixed held-out split."""
    from mlapi_tools.build.digits_data import load_split

    split = load_split()
    return split.test_x[:count], split.test_images[:count]


def upscale(image: np.ndarray, side: int) -> np.ndarray:
    """An 8x8 digit blown up to ``side`` x ``side`` (a multiple of 8) by pixel repetition."""
    if side % image.shape[0]:
        raise ValueError(f"image side must be a multiple of {image.shape[0]}, got {side}")
    factor = side // image.shape[0]
    return np.kron(image, np.ones((factor, factor), dtype=np.uint8))


def payloads(
    model: str, count: int = POOL_SIZE, image_side: int = 8
) -> list[dict[str, np.ndarray]]:
    """``count`` single-request payloads for ``model``."""
    if model == IDENTITY_MODEL:
        rng = np.random.default_rng(0)
        return [{"data": rng.random((1, 64), dtype=np.float32)} for _ in range(count)]
    pixels, images = _held_out(count)
    if model == "digits_classifier":
        return [{"pixels": row[None].astype(np.float32)} for row in pixels]
    if model == "digits":
        return [{"image": upscale(img, image_side)[None]} for img in images]
    raise ValueError(
        f"no payload for model {model!r}: known are digits, digits_classifier, {IDENTITY_MODEL}"
    )
