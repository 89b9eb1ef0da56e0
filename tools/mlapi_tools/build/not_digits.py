"""Images that are not one digit: the examples of the classifier's "not a digit" class.

Letters and symbols typed in the training fonts, geometric shapes, pen scribbles, cluttered
scenes of shapes, stripes and grids, smooth random fields, gradients, noise and crops of real
pictures (matplotlib's sample photograph and terrain), photographed with
the same augmentation as the digits. Glyphs that read as digits (O, l, S, Z, B, g, ...) and shapes
that are digits (a ring is a 0, a bar a 1) are left out. normalise_digit flags many of these
images on its own; the rest are the training examples of the class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mlapi_tools.build import augment, fonts, handwriting

# Letters and symbols that do not read as a digit.
GLYPHS = "ACEFHKMNPRUVWXYacdefhkmnprtuvwxy#%&@*+=<>?~^{}"
KINDS = (
    "glyph",
    "shape",
    "scribble",
    "clutter",
    "stripes",
    "smooth_field",
    "gradient",
    "noise",
    "photo",
)
# Relative frequency of each kind (the ink-like kinds are the ones normalise_digit lets through).
KIND_WEIGHTS = (0.36, 0.2, 0.06, 0.1, 0.06, 0.06, 0.04, 0.04, 0.08)
# Real pictures that ship with matplotlib: a photograph (Grace Hopper, US Navy, public domain)
# and a terrain elevation model. Crops of them stand for photographs of things that are not
# digits.
PHOTO_FILES = ("grace_hopper.jpg", "jacksboro_fault_dem.npz")


def _polygon(
    rng: np.random.Generator, centre: NDArray[np.float64], radius: float
) -> tuple[list[float], bool]:
    """Corner coordinates of a random shape, and whether it is round (blob, 5+ corners)."""
    kind = int(rng.integers(4))
    start = rng.uniform(0, 2 * math.pi)
    if kind == 0:  # triangle .. hexagon
        corners = int(rng.integers(3, 7))
        angles = start + np.arange(corners) * 2 * math.pi / corners
        radii = np.full(corners, radius)
    elif kind == 1:  # star
        corners = 2 * int(rng.integers(4, 7))
        angles = start + np.arange(corners) * 2 * math.pi / corners
        radii = np.where(np.arange(corners) % 2 == 0, radius, radius * rng.uniform(0.35, 0.6))
    elif kind == 2:  # plus / cross
        w = rng.uniform(0.15, 0.35)
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w)]
        pts += [(-1, w), (-1, -w), (-w, -w)]
        rot = rng.uniform(0, math.pi)
        out = []
        for x, y in pts:
            out += [
                centre[0] + radius * (x * math.cos(rot) - y * math.sin(rot)),
                centre[1] + radius * (x * math.sin(rot) + y * math.cos(rot)),
            ]
        return out, False
    else:  # irregular blob
        corners = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
        radii = radius * rng.uniform(0.5, 1.0, corners)
    xs = centre[0] + radii * np.cos(angles)
    ys = centre[1] + radii * np.sin(angles)
    points = [float(v) for pair in zip(xs, ys, strict=True) for v in pair]
    return points, kind == 3 or (kind == 0 and corners > 4)


def _draw_shapes(rng: np.random.Generator, side: int, count: int) -> NDArray[np.float32]:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (side * 2, side * 2), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        radius = side * 2 * (rng.uniform(0.2, 0.42) if count == 1 else rng.uniform(0.06, 0.2))
        centre = (
            rng.uniform(0.3, 0.7, 2) * side * 2
            if count == 1
            else rng.uniform(0.1, 0.9, 2) * side * 2
        )
        points, round_shape = _polygon(rng, centre, radius)
        # Outlined, a blob or a many-sided polygon is a 0: those are only drawn filled.
        if round_shape or rng.random() < 0.5:
            draw.polygon(points, fill=255)
        else:
            width = max(2, int(radius * rng.uniform(0.1, 0.3)))
            draw.line(points + points[:2], fill=255, width=width, joint="curve")
    reduced = canvas.resize((side, side), Image.Resampling.BOX)
    return np.asarray(reduced, dtype=np.float32) / 255.0


def _glyph(rng: np.random.Generator, side: int, font_files: Sequence[Path]) -> NDArray[np.float32]:
    font = font_files[int(rng.integers(len(font_files)))]
    text = GLYPHS[int(rng.integers(len(GLYPHS)))]
    if rng.random() < 0.15:  # two glyphs side by side
        text += GLYPHS[int(rng.integers(len(GLYPHS)))]
    image = fonts.render_text(font, text, side, ink=255, paper=0)
    return image.astype(np.float32) / 255.0


def _stripes(rng: np.random.Generator, side: int) -> NDArray[np.uint8]:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(3, side / 3)
    wave = np.sin((math.cos(angle) * xx + math.sin(angle) * yy) * 2 * math.pi / period)
    if rng.random() < 0.4:  # grid / checkerboard
        wave = wave * np.sin((-math.sin(angle) * xx + math.cos(angle) * yy) * 2 * math.pi / period)
    level, amp = rng.uniform(60, 200), rng.uniform(20, 60)
    return np.clip(level + amp * np.sign(wave), 0, 255).astype(np.uint8)


def _smooth_field(rng: np.random.Generator, side: int) -> NDArray[np.uint8]:
    from scipy.ndimage import gaussian_filter

    field = np.zeros((side, side))
    for scale in (side / 3, side / 8, side / 20):  # a few octaves: sky, foliage, grain
        layer = gaussian_filter(rng.normal(0, 1, (side, side)), max(scale, 0.7))
        field += rng.uniform(0.2, 1.0) * layer / (layer.std() + 1e-9)
    field = (field - field.mean()) / (field.std() + 1e-9)
    return np.clip(128 + rng.uniform(15, 60) * field, 0, 255).astype(np.uint8)


def _gradient(rng: np.random.Generator, side: int) -> NDArray[np.uint8]:
    yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = math.cos(angle) * xx + math.sin(angle) * yy
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    low = rng.uniform(0, 200)
    image = low + rng.uniform(10, 255 - low) * ramp + rng.normal(0, rng.uniform(0, 6), ramp.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator, side: int) -> NDArray[np.uint8]:
    if rng.random() < 0.5:
        return rng.integers(0, 256, (side, side), dtype=np.uint8)
    base = rng.uniform(30, 220)
    return np.clip(base + rng.normal(0, rng.uniform(5, 60), (side, side)), 0, 255).astype(np.uint8)


@cache
def _photos() -> tuple[NDArray[np.float64], ...]:
    import matplotlib.cbook
    from PIL import Image

    photos = []
    for name in PHOTO_FILES:
        path = matplotlib.cbook.get_sample_data(name, asfileobj=False)
        if name.endswith(".npz"):
            with np.load(path) as data:
                field = data["elevation"].astype(np.float64)
            photos.append(255.0 * (field - field.min()) / (np.ptp(field) + 1e-9))
        else:
            photos.append(np.asarray(Image.open(path).convert("L"), dtype=np.float64))
    return tuple(photos)


def _photo(rng: np.random.Generator, side: int) -> NDArray[np.uint8]:
    from PIL import Image

    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    crop = int(rng.integers(24, min(photo.shape) + 1))
    top = int(rng.integers(photo.shape[0] - crop + 1))
    left = int(rng.integers(photo.shape[1] - crop + 1))
    patch = Image.fromarray(photo[top : top + crop, left : left + crop].astype(np.float32), "F")
    image = np.asarray(patch.resize((side, side), Image.Resampling.BILINEAR), np.float64)
    if rng.random() < 0.5:
        image = 255.0 - image
    gamma = rng.uniform(0.6, 1.6)
    image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** gamma
    return np.clip(image + rng.normal(0, rng.uniform(0, 4), image.shape), 0, 255).astype(np.uint8)


def not_digit_image(
    rng: np.random.Generator,
    font_files: Sequence[Path],
    strength: augment.Strength,
    kind: str | None = None,
) -> tuple[str, NDArray[np.uint8]]:
    """One non-digit image (uint8, side 24..128) and its kind (one of KINDS)."""
    if kind is None:
        kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    side = int(rng.integers(24, 129))
    direct: dict[str, Callable[[np.random.Generator, int], NDArray[np.uint8]]] = {
        "stripes": _stripes,
        "smooth_field": _smooth_field,
        "gradient": _gradient,
        "noise": _noise,
        "photo": _photo,
    }
    if kind in direct:
        return kind, direct[kind](rng, side)
    if kind == "glyph":
        ink = _glyph(rng, 64, font_files)
    elif kind == "shape":
        ink = _draw_shapes(rng, 64, 1)
    elif kind == "scribble":
        ink = handwriting.scribble(rng, 64)
    elif kind == "clutter":
        ink = _draw_shapes(rng, 64, int(rng.integers(3, 9)))
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return kind, augment.augment(ink, rng, strength, side)
