"""The digits evaluation sets: deterministic images of digits and of things that are not digits.

Disjoint from training by construction: handwritten digits come from the held-out part of
digits_data's fixed split, typed digits and letters from the held-out font families
(fonts.held_out_fonts), photos from scikit-learn's bundled sample images (no training source
uses them), and every random choice from a generator seeded by EVAL_SEED and the set's name,
a stream no build step draws from. The generators here are written for the evaluation, not
shared with the training augmentation, so the sets do not inherit its assumptions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mlapi_tools.build import fonts
from mlapi_tools.build.digits_data import load_split

Image8 = NDArray[np.uint8]
Ink = NDArray[np.float64]  # 0..1, ink high
NOT_A_DIGIT = -1
EVAL_SEED = 20261202
# Letters and symbols that do not read as a digit (O/0, l/1, S/5, Z/2, B/8, g/9, b/6 and bar-like
# symbols such as | / ! are left out).
LETTERS = "ACEFHKMNPRUVWXYacefhkmnrtuvwx"
SYMBOLS = "#%&@*+=<>?~^{}"
MAX_ROTATION_DEG = 20.0


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: images, their labels (NOT_A_DIGIT for non-digits) and its kind."""

    name: str
    is_digit: bool
    images: tuple[Image8, ...]
    labels: NDArray[np.int64]
    description: str

    def __len__(self) -> int:
        return len(self.images)


def _rng(name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{EVAL_SEED}/{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --- ink sources -------------------------------------------------------------------------------


@cache
def _held_out_rows() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    split = load_split()
    return split.test_x.astype(np.float64) / 16.0, split.test_y


@cache
def _held_out_fonts() -> tuple[Path, ...]:
    return tuple(fonts.held_out_fonts())


def _resize(ink: Ink, height: int, width: int) -> Ink:
    from PIL import Image

    img = Image.fromarray(ink.astype(np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64)


def _handwritten(rng: np.random.Generator, side_px: int) -> tuple[Ink, int]:
    rows, labels = _held_out_rows()
    index = int(rng.integers(len(labels)))
    ink = rows[index].reshape(8, 8)
    return np.clip(_resize(ink, side_px, side_px), 0.0, 1.0), int(labels[index])


def _typed(rng: np.random.Generator, text: str, size_px: int, stroke_px: int = 0) -> Ink:
    files = _held_out_fonts()
    font = files[int(rng.integers(len(files)))]
    rendered = fonts.render_text(font, text, size_px, pad_px=0, stroke_px=stroke_px)
    return (255.0 - rendered.astype(np.float64)) / 255.0


def _digit_ink(rng: np.random.Generator, size_px: int) -> tuple[Ink, int]:
    """A held-out handwritten digit or a digit typed in a held-out font, half and half."""
    if rng.random() < 0.5:
        return _handwritten(rng, size_px)
    label = int(rng.integers(10))
    return _typed(rng, str(label), size_px), label


# --- composing a photo-like image ---------------------------------------------------------------


def _place(ink: Ink, rng: np.random.Generator, margin: tuple[float, float]) -> Ink:
    """Put ``ink`` somewhere on a square canvas whose side is its longer side x (1 + margin)."""
    height, width = ink.shape
    side = max(round(max(height, width) * (1.0 + rng.uniform(*margin))), height + 2, width + 2)
    canvas = np.zeros((side, side))
    top = int(rng.integers(1, side - height))
    left = int(rng.integers(1, side - width))
    canvas[top : top + height, left : left + width] = ink
    return canvas


def _to_image(
    ink: Ink,
    rng: np.random.Generator,
    contrast: tuple[float, float] = (120.0, 230.0),
    noise_sigma: float = 0.0,
) -> Image8:
    """Ink on paper in a random polarity (dark ink on light paper three times in four)."""
    difference = rng.uniform(*contrast)
    dark_ink = rng.random() < 0.75
    paper = rng.uniform(difference, 255.0) if dark_ink else rng.uniform(0.0, 255.0 - difference)
    signed = -difference if dark_ink else difference
    grey = paper + signed * ink
    if noise_sigma:
        grey = grey + rng.normal(0.0, noise_sigma, grey.shape)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _rotate(ink: Ink, degrees: float) -> Ink:
    from PIL import Image

    img = Image.fromarray(ink.astype(np.float32), mode="F")
    return np.asarray(
        img.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=True), dtype=np.float64
    )


def _morph(ink: Ink, steps: int) -> Ink:
    """Thicken (steps > 0) or thin (steps < 0) the strokes by |steps| pixels."""
    from scipy import ndimage

    if steps == 0:
        return ink
    reach = abs(steps)
    disc = np.hypot(*np.mgrid[-reach : reach + 1, -reach : reach + 1]) <= reach + 0.5
    grow = ndimage.grey_dilation if steps > 0 else ndimage.grey_erosion
    return np.asarray(grow(ink, footprint=disc), dtype=np.float64)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> Ink:
    """Smooth random field in -1..1: coarse noise upsampled bilinearly."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells))
    return _resize(coarse, *shape)


def _photo_background(rng: np.random.Generator, ink: Ink) -> Image8:
    """Ink on paper under a lighting ramp, a vignette, a soft shadow and paper texture."""
    height, width = ink.shape
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(30, 90)
    vignette = -rng.uniform(10, 40) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2
    shadow_edge = rng.uniform(0.2, 0.8)
    shadow = -rng.uniform(0, 40) / (1 + np.exp(-(xx - shadow_edge) * 30))
    texture = _smooth_field(rng, (height, width), int(rng.integers(6, 20))) * rng.uniform(3, 12)
    paper = rng.uniform(150, 220) + ramp + vignette + shadow + texture
    paper -= ramp.mean()
    ink_level = rng.uniform(15, 70)
    grey = paper * (1 - ink) + ink_level * ink + rng.normal(0, rng.uniform(1, 6), ink.shape)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


# --- the digit sets -----------------------------------------------------------------------------


def _placed_size(rng: np.random.Generator) -> int:
    return int(rng.choice([16, 24, 32, 48, 64, 96, 128]))


def handwritten_8x8(count: int) -> EvalSet:
    """The held-out split as the 8x8 images users of versions 1 and 2 send (all rows first)."""
    rows, labels = _held_out_rows()
    order = np.resize(np.arange(len(labels)), count)
    images = tuple(np.rint(rows[i].reshape(8, 8) * 255).astype(np.uint8) for i in order)
    return EvalSet(
        "handwritten_8x8", True, images, labels[order], "held-out split, 8x8, ink bright"
    )


def _digit_set(
    name: str,
    count: int,
    description: str,
    make: Callable[[np.random.Generator], tuple[Image8, int]],
) -> EvalSet:
    rng = _rng(name)
    pairs = [make(rng) for _ in range(count)]
    labels = np.array([label for _, label in pairs], dtype=np.int64)
    return EvalSet(name, True, tuple(img for img, _ in pairs), labels, description)


def _handwritten_placed(rng: np.random.Generator) -> tuple[Image8, int]:
    ink, label = _handwritten(rng, _placed_size(rng))
    return _to_image(_place(ink, rng, (0.3, 2.5)), rng, noise_sigma=rng.uniform(0, 4)), label


def _typed_placed(rng: np.random.Generator) -> tuple[Image8, int]:
    label = int(rng.integers(10))
    ink = _typed(rng, str(label), _placed_size(rng) + 8)
    return _to_image(_place(ink, rng, (0.3, 2.5)), rng, noise_sigma=rng.uniform(0, 4)), label


def _strokes(rng: np.random.Generator) -> tuple[Image8, int]:
    size = int(rng.choice([48, 64, 96, 128]))
    ink, label = _digit_ink(rng, size)
    steps = int(rng.choice([-2, -1, 1, 2, 3])) * max(1, size // 64)
    changed = _morph(ink, steps)
    while steps < 0 and changed.sum() < 0.4 * ink.sum():  # thinned away: thin it less
        steps += 1
        changed = _morph(ink, steps)
    return _to_image(_place(changed, rng, (0.3, 1.5)), rng), label


def _rotated(rng: np.random.Generator) -> tuple[Image8, int]:
    ink, label = _digit_ink(rng, _placed_size(rng) + 16)
    turned = _rotate(ink, rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    return _to_image(_place(turned, rng, (0.3, 1.5)), rng), label


def _low_contrast(rng: np.random.Generator) -> tuple[Image8, int]:
    ink, label = _digit_ink(rng, _placed_size(rng) + 16)
    return _to_image(_place(ink, rng, (0.3, 1.5)), rng, contrast=(20.0, 45.0)), label


def _noisy(rng: np.random.Generator) -> tuple[Image8, int]:
    ink, label = _digit_ink(rng, int(rng.choice([32, 48, 64, 96])))
    image = _to_image(_place(ink, rng, (0.3, 1.5)), rng, noise_sigma=rng.uniform(10, 25))
    return image, label


def _photo_digit(rng: np.random.Generator) -> tuple[Image8, int]:
    ink, label = _digit_ink(rng, int(rng.choice([32, 48, 64, 96, 128])))
    return _photo_background(rng, _place(ink, rng, (0.5, 2.0))), label


# --- the not-digit sets -------------------------------------------------------------------------


def _not_digit_set(
    name: str, count: int, description: str, make: Callable[[np.random.Generator], Image8]
) -> EvalSet:
    rng = _rng(name)
    images = tuple(make(rng) for _ in range(count))
    labels = np.full(count, NOT_A_DIGIT, dtype=np.int64)
    return EvalSet(name, False, images, labels, description)


def _glyph(rng: np.random.Generator, alphabet: str) -> Image8:
    ink = _typed(rng, alphabet[int(rng.integers(len(alphabet)))], _placed_size(rng) + 16)
    return _to_image(_place(ink, rng, (0.3, 1.5)), rng, noise_sigma=rng.uniform(0, 4))


def _polygon_points(rng: np.random.Generator, cx: float, cy: float, r: float) -> list[float]:
    kind = int(rng.integers(3))
    start = rng.uniform(0, 2 * math.pi)
    if kind == 0:  # triangle, square, pentagon
        n = int(rng.integers(3, 6))
        radii = np.full(n, r)
    elif kind == 1:  # star
        n = 2 * int(rng.integers(5, 8))
        radii = np.where(np.arange(n) % 2 == 0, r, r * 0.45)
    else:  # blob: a lumpy closed outline
        n = 24
        radii = r * (1 + 0.25 * np.sin(np.arange(n) * 2 * math.pi / n * int(rng.integers(2, 5))))
    angles = start + np.arange(n) * 2 * math.pi / n
    xs, ys = cx + radii * np.cos(angles), cy + radii * np.sin(angles)
    return np.column_stack([xs, ys]).reshape(-1).tolist()


def _shapes(rng: np.random.Generator) -> Image8:
    """Filled polygons, stars and blobs, one or several (no ring: that is a 0, no bar: a 1)."""
    from PIL import Image, ImageDraw

    side = int(rng.choice([48, 64, 96, 128, 192]))
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    count = 1 if rng.random() < 0.5 else int(rng.integers(2, 6))
    for _ in range(count):
        r = side * (rng.uniform(0.15, 0.3) if count == 1 else rng.uniform(0.06, 0.14))
        cx, cy = rng.uniform(r + 2, side - r - 2, 2)
        draw.polygon(_polygon_points(rng, cx, cy, r), fill=255)
    ink = np.asarray(canvas, dtype=np.float64) / 255.0
    return _to_image(ink, rng, noise_sigma=rng.uniform(0, 4))


def _texture(rng: np.random.Generator) -> Image8:
    """Stripes, checkerboards, gratings, dot grids or a rough random field, edge to edge."""
    side = int(rng.choice([32, 64, 128, 256]))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    period = rng.uniform(4, side / 4)
    kind = int(rng.integers(4))
    if kind == 0:
        angle = rng.uniform(0, math.pi)
        value = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * math.pi / period)
    elif kind == 1:
        value = np.sign(np.sin(xx * math.pi / period) * np.sin(yy * math.pi / period))
    elif kind == 2:
        value = np.cos(xx * 2 * math.pi / period) + np.cos(yy * 2 * math.pi / period) - 1.0
    else:
        value = _smooth_field(rng, (side, side), int(rng.integers(side // 8, side // 2)))
    ink = np.clip(value * 0.5 + 0.5, 0, 1)
    return _to_image(ink, rng, noise_sigma=rng.uniform(0, 6))


@cache
def _photos() -> tuple[NDArray[np.float64], ...]:
    from sklearn.datasets import load_sample_images

    return tuple(
        img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        for img in load_sample_images().images
    )


def _photo(rng: np.random.Generator) -> Image8:
    """A random crop of a bundled photograph (a temple, a flower), resized."""
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    crop = int(rng.integers(40, min(photo.shape)))
    top = int(rng.integers(photo.shape[0] - crop + 1))
    left = int(rng.integers(photo.shape[1] - crop + 1))
    out = int(rng.choice([28, 64, 128, 256]))
    patch = _resize(photo[top : top + crop, left : left + crop], out, out)
    return np.clip(np.rint(patch), 0, 255).astype(np.uint8)


def _noise(rng: np.random.Generator) -> Image8:
    side = int(rng.choice([8, 28, 64, 128, 256]))
    kind = int(rng.integers(3))
    if kind == 0:
        return rng.integers(0, 256, (side, side), dtype=np.uint8)
    if kind == 1:
        grey = rng.normal(rng.uniform(60, 200), rng.uniform(10, 60), (side, side))
    else:  # salt and pepper on a flat page
        grey = np.full((side, side), rng.uniform(0, 255))
        hit = rng.random((side, side)) < rng.uniform(0.02, 0.3)
        grey[hit] = rng.choice([0.0, 255.0], int(hit.sum()))
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _blank(rng: np.random.Generator) -> Image8:
    side = int(rng.choice([8, 28, 64, 256]))
    level = rng.uniform(0, 255)
    ramp = np.linspace(0, rng.uniform(0, 6), side)[None, :] * np.ones((side, 1))
    grain = rng.normal(0, rng.uniform(0, 1.5), (side, side))
    return np.clip(np.rint(level + ramp + grain), 0, 255).astype(np.uint8)


DIGIT_SETS: dict[str, tuple[str, Callable[[np.random.Generator], tuple[Image8, int]]]] = {
    "handwritten_placed": (
        "held-out handwritten, 16-128 px, anywhere on the page",
        _handwritten_placed,
    ),
    "typed": ("held-out fonts, 24-136 px, anywhere on the page", _typed_placed),
    "strokes": ("handwritten or typed, strokes thinned or thickened 1-6 px", _strokes),
    "rotated": (f"handwritten or typed, rotated up to +-{MAX_ROTATION_DEG:g} deg", _rotated),
    "low_contrast": ("ink 20-45 grey levels from the paper", _low_contrast),
    "noisy": ("Gaussian noise, sigma 10-25 grey levels", _noisy),
    "photo_background": ("lighting ramp, vignette, shadow and paper texture", _photo_digit),
}
NOT_DIGIT_SETS: dict[str, tuple[str, Callable[[np.random.Generator], Image8]]] = {
    "letters": (f"letters in held-out fonts ({LETTERS})", lambda rng: _glyph(rng, LETTERS)),
    "symbols": (f"symbols in held-out fonts ({SYMBOLS})", lambda rng: _glyph(rng, SYMBOLS)),
    "shapes": ("filled polygons, stars and blobs, one or several", _shapes),
    "textures": ("stripes, checkerboards, gratings, random fields", _texture),
    "photos": ("crops of scikit-learn's sample photographs", _photo),
    "noise": ("uniform, Gaussian and salt-and-pepper noise", _noise),
    "blank": ("flat pages, faint gradients and grain", _blank),
}
SET_NAMES = ("handwritten_8x8", *DIGIT_SETS, *NOT_DIGIT_SETS)


def build_set(name: str, count: int) -> EvalSet:
    """The evaluation set ``name`` with ``count`` images (the same images every time)."""
    if name == "handwritten_8x8":
        return handwritten_8x8(count)
    if name in DIGIT_SETS:
        description, make = DIGIT_SETS[name]
        return _digit_set(name, count, description, make)
    if name in NOT_DIGIT_SETS:
        description, make_other = NOT_DIGIT_SETS[name]
        return _not_digit_set(name, count, description, make_other)
    raise ValueError(f"unknown evaluation set {name!r}; known: {', '.join(SET_NAMES)}")


def build_sets(count: int, names: Sequence[str] = SET_NAMES) -> list[EvalSet]:
    """Every named set with ``count`` images each."""
    return [build_set(name, count) for name in names]
