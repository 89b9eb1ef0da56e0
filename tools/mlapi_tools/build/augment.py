"""Augmentation of raw digit images, applied before normalise_digit (as a user's image would be).

Two stages. ``distort`` changes the ink map itself (ink 1, paper 0): affine (rotation, shear,
scale, placement on a larger canvas), elastic distortion and stroke thickness. ``photograph``
turns an ink map into the uint8 picture a camera or scanner would give: paper and ink levels
(low contrast included), either polarity, lighting gradients, paper texture, blur and sensor
noise. ``Strength`` bounds every random range, so held-out sets can be augmented harder or
softer than training. Everything derives from the numpy Generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Ink = NDArray[np.float32]


@dataclass(frozen=True)
class Strength:
    """Ranges of the random augmentations (each drawn uniformly within +-range or the range)."""

    rotation_deg: float = 20.0
    shear: float = 0.3
    scale: tuple[float, float] = (0.75, 1.15)
    canvas: tuple[float, float] = (1.05, 2.2)  # canvas side / digit canvas side
    elastic_px: float = 1.5  # displacement amplitude at the ink map's scale per 64 px
    thickness_steps: tuple[int, int] = (-1, 2)
    blur_sigma: tuple[float, float] = (0.0, 1.2)
    noise_sigma: tuple[float, float] = (0.0, 25.0)
    min_contrast: float = 20.0
    # Noise sigma and texture amplitude are capped at these shares of the ink contrast: past
    # them normalise_digit's threshold breaks strokes into fragments no label can be read from.
    max_noise_share: float = 0.2
    max_texture_share: float = 0.1
    inverted_share: float = 0.3
    texture_share: float = 0.4
    gradient_share: float = 0.5


NONE = Strength(
    rotation_deg=0.0,
    shear=0.0,
    scale=(1.0, 1.0),
    canvas=(1.0, 1.0),
    elastic_px=0.0,
    thickness_steps=(0, 0),
    blur_sigma=(0.0, 0.0),
    noise_sigma=(0.0, 0.0),
    min_contrast=255.0,
    max_noise_share=0.0,
    max_texture_share=0.0,
    inverted_share=0.0,
    texture_share=0.0,
    gradient_share=0.0,
)
TRAINING = Strength()
# Held-out augmented sets: the same ranges; their images are new draws from other seeds.
HELD_OUT = Strength()


def _affine(ink: Ink, rng: np.random.Generator, strength: Strength, out_side: int) -> Ink:
    from scipy.ndimage import affine_transform

    angle = math.radians(rng.uniform(-strength.rotation_deg, strength.rotation_deg))
    shear = rng.uniform(-strength.shear, strength.shear)
    scale = rng.uniform(*strength.scale) * out_side / max(ink.shape) / rng.uniform(*strength.canvas)
    cos, sin = math.cos(angle), math.sin(angle)
    forward = scale * np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, 0.0], [shear, 1.0]])
    inverse = np.linalg.inv(forward)
    in_centre = (np.array(ink.shape, dtype=np.float64) - 1) / 2
    # Placement: the digit's centre anywhere that keeps most of it inside the canvas.
    room = max(0.0, out_side / 2 - scale * max(ink.shape) / 2)
    out_centre = (out_side - 1) / 2 + rng.uniform(-room, room, 2) * 0.8
    offset = in_centre - inverse @ out_centre
    return affine_transform(
        ink, inverse, offset=offset, output_shape=(out_side, out_side), order=1, cval=0.0
    ).astype(np.float32)


def _elastic(ink: Ink, rng: np.random.Generator, amplitude_px: float) -> Ink:
    from scipy.ndimage import gaussian_filter, map_coordinates

    if amplitude_px <= 0:
        return ink
    side = max(ink.shape)
    sigma = side / 8
    amplitude = amplitude_px * side / 64
    fields = []
    for _ in range(2):
        field = gaussian_filter(rng.normal(0.0, 1.0, ink.shape), sigma)
        fields.append(field / (np.abs(field).max() + 1e-9) * amplitude)
    rows, cols = np.meshgrid(np.arange(ink.shape[0]), np.arange(ink.shape[1]), indexing="ij")
    coords = np.array([rows + fields[0], cols + fields[1]])
    return map_coordinates(ink, coords, order=1, cval=0.0).astype(np.float32)


def _thickness(ink: Ink, steps: int) -> Ink:
    from scipy.ndimage import grey_dilation, grey_erosion

    for _ in range(abs(steps)):
        ink = grey_dilation(ink, size=(2, 2)) if steps > 0 else grey_erosion(ink, size=(2, 2))
    return ink


def distort(ink: Ink, rng: np.random.Generator, strength: Strength, out_side: int) -> Ink:
    """Thickness, elastic distortion, then affine onto an ``out_side`` square canvas."""
    steps = int(rng.integers(strength.thickness_steps[0], strength.thickness_steps[1] + 1))
    if steps < 0 and ink.sum() < 0.08 * ink.size:
        steps = 0  # thin strokes would vanish
    ink = _thickness(ink, steps)
    ink = _elastic(ink, rng, rng.uniform(0.0, strength.elastic_px))
    if strength == NONE:
        return _place(ink, out_side)
    return _affine(ink, rng, strength, out_side)


def _place(ink: Ink, out_side: int) -> Ink:
    from PIL import Image

    if ink.shape == (out_side, out_side):
        return ink
    image = Image.fromarray(ink.astype(np.float32), mode="F")
    return np.asarray(image.resize((out_side, out_side), Image.Resampling.BICUBIC)).clip(0, 1)


def _texture(rng: np.random.Generator, side: int) -> NDArray[np.float64]:
    from scipy.ndimage import gaussian_filter

    grain = gaussian_filter(rng.normal(0.0, 1.0, (side, side)), rng.uniform(0.5, 3.0))
    fibres = gaussian_filter(rng.normal(0.0, 1.0, (side, side)), (rng.uniform(0.5, 1.0), 6.0))
    field = grain / (grain.std() + 1e-9) + 0.5 * fibres / (fibres.std() + 1e-9)
    return np.asarray(field)


def photograph(ink: Ink, rng: np.random.Generator, strength: Strength) -> NDArray[np.uint8]:
    """Paper, ink, lighting, texture, blur and noise: the uint8 image a user would send."""
    from scipy.ndimage import gaussian_filter

    side = ink.shape[0]
    contrast = rng.uniform(strength.min_contrast, 230.0) if strength != NONE else 255.0
    paper = rng.uniform(contrast, 255.0) if strength != NONE else 255.0
    image = paper - contrast * ink.astype(np.float64)
    if rng.random() < strength.gradient_share:
        yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = math.cos(angle) * xx + math.sin(angle) * yy
        image *= 1.0 - rng.uniform(0.0, 0.45) * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    if rng.random() < strength.texture_share:
        image += _texture(rng, side) * rng.uniform(0.0, strength.max_texture_share * contrast)
    sigma = rng.uniform(*strength.blur_sigma) * side / 64
    if sigma > 0.05:
        image = gaussian_filter(image, sigma)
    noise = min(rng.uniform(*strength.noise_sigma), strength.max_noise_share * contrast)
    image += rng.normal(0.0, noise, image.shape)
    if rng.random() < strength.inverted_share:
        image = 255.0 - image
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def augment(
    ink: Ink, rng: np.random.Generator, strength: Strength, out_side: int
) -> NDArray[np.uint8]:
    """``distort`` then ``photograph``: a raw uint8 image for normalise_digit."""
    return photograph(distort(ink, rng, strength, out_side), rng, strength)
