"""The digits dataset, its fixed train/held-out split, and the synthetic non-digit images.

Everything here is deterministic: the split and every random image derive from fixed seeds, so
the build, the tests and the benchmarks all see the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlapi_backend.preprocessing import digits_to_images, preprocess_digit

SPLIT_SEED = 20240601
HELD_OUT_FRACTION = 0.25
# Label of the "not a digit" class the classifiers are trained with (outlier exposure). The
# exported models drop its column: the served probabilities of the ten digits then sum to
# 1 - P(not a digit), so junk input gets low digit scores instead of an over-confident guess.
NOT_A_DIGIT = 10


@dataclass(frozen=True)
class DigitsSplit:
    train_x: np.ndarray  # float32 (N, 64), 0..16
    train_y: np.ndarray  # int64 (N,)
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def test_images(self) -> np.ndarray:
        """Held-out digits as uint8 8x8 images (ink bright), as a user would send them."""
        return digits_to_images(self.test_x)


def load_split() -> DigitsSplit:
    """scikit-learn's bundled digits (no download) with a fixed, stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=HELD_OUT_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return DigitsSplit(train_x, train_y, test_x, test_y)


def noise_images(
    count: int, seed: int, sizes: tuple[int, ...] = (8, 16, 28, 64)
) -> list[np.ndarray]:
    """Uniform random uint8 images of the given square sizes, cycling through them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (s, s), dtype=np.uint8) for s in np.resize(sizes, count)]


def junk_images(count: int, seed: int) -> list[np.ndarray]:
    """Non-digit images for training the reject class: noise, speckle, blobs and flat images."""
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = noise_images(count // 2, seed + 1)
    for _ in range(count - len(images)):
        side = int(rng.choice([8, 16, 28, 64]))
        kind = rng.integers(0, 3)
        if kind == 0:  # sparse speckle on a flat background
            img = np.full((side, side), rng.integers(0, 256), dtype=np.uint8)
            mask = rng.random((side, side)) < rng.uniform(0.05, 0.5)
            img[mask] = rng.integers(0, 256, int(mask.sum()))
        elif kind == 1:  # smooth random field (blurred noise)
            coarse = rng.integers(0, 256, (4, 4)).astype(np.float64)
            img = np.kron(coarse, np.ones((side // 4, side // 4))).astype(np.uint8)
        else:  # flat image, possibly with a faint gradient
            base = rng.integers(0, 256)
            ramp = np.linspace(0, rng.uniform(0, 3), side)
            img = np.clip(base + ramp[None, :] + np.zeros((side, 1)), 0, 255).astype(np.uint8)
        images.append(img)
    return images


def preprocessed(images: list[np.ndarray]) -> np.ndarray:
    """Run images through the served preprocessing; (N, 64) float32."""
    return np.stack([preprocess_digit(img).pixels for img in images])
