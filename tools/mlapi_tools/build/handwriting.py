"""Synthetic hand-drawn digits: per-digit stroke skeletons, jittered, drawn with a pen.

Each digit has a few skeleton variants (an open or closed 4, a 7 with or without a bar, a 1 with
or without its flag and base, ...). A skeleton is a list of strokes in a unit box (x to the right,
y down); a stroke is a list of control points through which a Catmull-Rom spline passes. Drawing
jitters the control points, slants, stretches and rotates the whole, and draws it at 4x with a
round pen of random width, then area-reduces: an ink map in 0..1, ink 1 (augment.py turns ink maps
into photographs). Everything derives from the numpy Generator passed in.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Points = list[tuple[float, float]]
Skeleton = list[Points]


def _ellipse(cx: float, cy: float, rx: float, ry: float, start: float, turn: float) -> Points:
    steps = 12
    return [
        (
            cx + rx * math.cos(start + turn * i / steps),
            cy + ry * math.sin(start + turn * i / steps),
        )
        for i in range(steps + 1)
    ]


_ZERO = [_ellipse(0.5, 0.5, 0.36, 0.48, -math.pi / 2, 2.1 * math.pi)]
SKELETONS: dict[int, list[Skeleton]] = {
    0: [_ZERO, [_ellipse(0.5, 0.5, 0.3, 0.48, -math.pi / 2 - 0.3, -2.05 * math.pi)]],
    1: [
        [[(0.5, 0.02), (0.5, 0.98)]],
        [[(0.25, 0.25), (0.5, 0.02)], [(0.5, 0.02), (0.5, 0.98)]],
        [[(0.25, 0.22), (0.55, 0.02)], [(0.55, 0.02), (0.55, 0.98)], [(0.25, 0.98), (0.85, 0.98)]],
        # The long up-stroke many people (and fonts such as Roboto) give a 1.
        [[(0.1, 0.4), (0.6, 0.02)], [(0.6, 0.02), (0.6, 0.98)]],
    ],
    2: [
        [
            [(0.15, 0.25), (0.35, 0.04), (0.65, 0.04), (0.85, 0.25), (0.75, 0.5), (0.12, 0.97)],
            [(0.12, 0.97), (0.9, 0.96)],
        ],
        [
            [(0.12, 0.2), (0.45, 0.02), (0.82, 0.2), (0.7, 0.5), (0.3, 0.8), (0.12, 0.97)],
            [(0.12, 0.97), (0.4, 0.86), (0.6, 0.94), (0.9, 0.92)],
        ],
    ],
    3: [
        [
            [(0.15, 0.15), (0.5, 0.02), (0.82, 0.18), (0.72, 0.4), (0.42, 0.48)],
            [(0.42, 0.48), (0.8, 0.58), (0.86, 0.82), (0.5, 0.98), (0.12, 0.86)],
        ],
        [
            [(0.15, 0.04), (0.85, 0.04)],
            [(0.85, 0.04), (0.45, 0.42)],
            [(0.45, 0.42), (0.82, 0.58), (0.85, 0.82), (0.5, 0.98), (0.12, 0.86)],
        ],
    ],
    4: [
        [[(0.68, 0.98), (0.68, 0.02)], [(0.68, 0.02), (0.1, 0.66)], [(0.1, 0.66), (0.92, 0.66)]],
        [[(0.3, 0.02), (0.14, 0.6)], [(0.14, 0.6), (0.9, 0.6)], [(0.66, 0.25), (0.66, 0.98)]],
    ],
    5: [
        [
            [(0.82, 0.03), (0.25, 0.03)],
            [(0.25, 0.03), (0.2, 0.45)],
            [(0.2, 0.45), (0.5, 0.38), (0.82, 0.52), (0.84, 0.78), (0.55, 0.97), (0.14, 0.88)],
        ],
        [
            [(0.25, 0.03), (0.2, 0.45)],
            [(0.2, 0.45), (0.5, 0.38), (0.82, 0.52), (0.84, 0.78), (0.55, 0.97), (0.14, 0.88)],
            [(0.25, 0.03), (0.85, 0.05)],
        ],
    ],
    6: [
        [
            [
                (0.75, 0.04),
                (0.42, 0.14),
                (0.2, 0.48),
                (0.2, 0.8),
                (0.45, 0.97),
                (0.75, 0.88),
                (0.8, 0.66),
                (0.55, 0.5),
                (0.3, 0.56),
                (0.2, 0.72),
            ]
        ],
        [
            [(0.65, 0.02), (0.3, 0.4), (0.2, 0.7)],
            _ellipse(0.5, 0.73, 0.3, 0.24, math.pi, 2.05 * math.pi),
        ],
    ],
    7: [
        [[(0.1, 0.04), (0.9, 0.04)], [(0.9, 0.04), (0.42, 0.98)]],
        [[(0.1, 0.04), (0.9, 0.04)], [(0.9, 0.04), (0.42, 0.98)], [(0.38, 0.5), (0.8, 0.5)]],
        [[(0.1, 0.1), (0.9, 0.04)], [(0.9, 0.04), (0.6, 0.45), (0.48, 0.98)]],
    ],
    8: [
        [
            _ellipse(0.5, 0.26, 0.27, 0.23, math.pi / 2, 2.05 * math.pi),
            _ellipse(0.5, 0.73, 0.33, 0.25, -math.pi / 2, 2.05 * math.pi),
        ],
        [
            [
                (0.72, 0.12),
                (0.5, 0.02),
                (0.25, 0.14),
                (0.3, 0.36),
                (0.7, 0.6),
                (0.78, 0.84),
                (0.5, 0.98),
                (0.22, 0.84),
                (0.3, 0.6),
                (0.7, 0.36),
                (0.75, 0.16),
            ]
        ],
    ],
    9: [
        [
            _ellipse(0.48, 0.3, 0.3, 0.27, 0.0, -2.05 * math.pi),
            [(0.78, 0.3), (0.76, 0.98)],
        ],
        [
            _ellipse(0.48, 0.3, 0.3, 0.27, 0.0, -2.05 * math.pi),
            [(0.78, 0.3), (0.76, 0.7), (0.5, 0.98), (0.22, 0.9)],
        ],
    ],
}


def catmull_rom(points: Points, per_segment: int = 8) -> NDArray[np.float64]:
    """Dense points of the Catmull-Rom spline through ``points`` (end points repeated)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        t = np.linspace(0.0, 1.0, per_segment + 1)[:, None]
        return np.asarray(p[0] + t * (p[-1] - p[0]))
    ext = np.vstack([p[:1], p, p[-1:]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        out.append(
            0.5
            * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
            )
        )
    out.append(p[-1:])
    return np.vstack(out)


def draw_strokes(
    strokes: list[NDArray[np.float64]], side: int, width_px: float, upsample: int = 4
) -> NDArray[np.float32]:
    """Draw dense polylines (pixel coordinates of a ``side`` canvas) with a round pen; 0..1 ink."""
    from PIL import Image, ImageDraw

    big = Image.new("L", (side * upsample, side * upsample), 0)
    draw = ImageDraw.Draw(big)
    pen = max(1, round(width_px * upsample))
    for stroke in strokes:
        xy = [(float(x) * upsample, float(y) * upsample) for x, y in stroke]
        draw.line(xy, fill=255, width=pen, joint="curve")
        for x, y in (xy[0], xy[-1]):  # round caps
            draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=255)
    small = big.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _transform(skeleton: Skeleton, rng: np.random.Generator, jitter: float) -> list[Points]:
    moved = []
    for stroke in skeleton:
        noise = rng.normal(0.0, jitter, (len(stroke), 2))
        moved.append([(x + dx, y + dy) for (x, y), (dx, dy) in zip(stroke, noise, strict=True)])
    return moved


def hand_drawn_digit(
    digit: int, rng: np.random.Generator, side: int = 64, jitter: float = 0.035
) -> NDArray[np.float32]:
    """One synthetic hand-drawn ``digit`` as a ``side`` x ``side`` ink map (ink 1, paper 0)."""
    variants = SKELETONS[digit]
    skeleton = _transform(variants[int(rng.integers(len(variants)))], rng, jitter)
    height = side * rng.uniform(0.45, 0.8)
    aspect = rng.uniform(0.45, 0.8) if digit != 1 else rng.uniform(0.3, 0.6)
    width = height * aspect
    slant = rng.uniform(-0.3, 0.3)
    angle = math.radians(rng.uniform(-12.0, 12.0))
    cos, sin = math.cos(angle), math.sin(angle)
    centre = side / 2 + rng.uniform(-0.08, 0.08, 2) * side
    strokes = []
    for stroke in skeleton:
        dense = catmull_rom(stroke)
        x = (dense[:, 0] - 0.5) * width + slant * (0.5 - dense[:, 1]) * height
        y = (dense[:, 1] - 0.5) * height
        strokes.append(
            np.stack([cos * x - sin * y + centre[0], sin * x + cos * y + centre[1]], axis=1)
        )
    pen = height * rng.uniform(0.05, 0.16)
    return draw_strokes(strokes, side, pen)


def scribble(rng: np.random.Generator, side: int = 64) -> NDArray[np.float32]:
    """A random pen scribble (not a digit): several strokes of many random control points."""
    strokes = []
    for _ in range(int(rng.integers(2, 4))):
        count = int(rng.integers(8, 14))
        points = [(float(x), float(y)) for x, y in rng.uniform(0.15, 0.85, (count, 2)) * side]
        strokes.append(catmull_rom(points))
    return draw_strokes(strokes, side, side * rng.uniform(0.03, 0.1))
