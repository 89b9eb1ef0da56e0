"""System fonts for typed digits: a deterministic training / held-out split by font family.

Fonts are found under /usr/share/fonts (TrueType and OpenType files that map all ten digits).
Each file belongs to a *family group*: its family name's first word, with clones folded into
the design they copy (Arimo, Tinos and Cousine are Liberation; FreeSans, FreeSerif and FreeMono
derive from URW's Nimbus; Hack from DejaVu Sans Mono; Carlito from Lato). A whole group is either
held out or used for training, so no held-out design is seen in training under another name.
"""

from __future__ import annotations

import hashlib
import math
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont

FONT_ROOT = Path("/usr/share/fonts")
# The Debian packages the Makefile's system-deps target installs (about 33 MB to download).
FONT_PACKAGES = (
    "fonts-dejavu-core",
    "fonts-liberation2",
    "fonts-freefont-ttf",
    "fonts-urw-base35",
    "fonts-croscore",
    "fonts-crosextra-carlito",
    "fonts-crosextra-caladea",
    "fonts-open-sans",
    "fonts-roboto-unhinted",
    "fonts-lato",
    "fonts-cantarell",
    "fonts-go",
    "fonts-comic-neue",
    "fonts-inconsolata",
    "fonts-hack",
    "fonts-ebgaramond",
    "fonts-quicksand",
    "fonts-league-spartan",
    "fonts-oxygen",
    "fonts-sil-gentium",
    "fonts-linuxlibertine",
)
# Held-out groups: a neo-grotesque sans (Roboto), a book serif (Gentium), a humanist sans with
# its monospace (Go), a rounded geometric sans (Quicksand) and a KDE sans with its mono (Oxygen).
HELD_OUT_GROUPS = frozenset({"roboto", "gentium", "go", "quicksand", "oxygen"})
# Groups not listed above (fonts installed later) are held out when their name's hash says so,
# so the split of the known groups never moves.
UNLISTED_HELD_OUT_MODULUS = 4
KNOWN_TRAINING_GROUPS = frozenset(
    {
        "dejavu",
        "liberation",
        "urw",
        "lato",
        "open",
        "cantarell",
        "caladea",
        "comic",
        "eb",
        "inconsolata",
        "league",
        "linux",
    }
)
# First words of family names that are clones of another group.
GROUP_ALIASES = {
    "arimo": "liberation",
    "tinos": "liberation",
    "cousine": "liberation",
    "freesans": "urw",
    "freeserif": "urw",
    "freemono": "urw",
    "nimbus": "urw",
    "c059": "urw",
    "p052": "urw",
    "z003": "urw",
    "hack": "dejavu",
    "carlito": "lato",
    "gentiumalt": "gentium",
    "oxygen-sans": "oxygen",
}
# Families whose glyphs are not ordinary text (dingbats, symbols, key caps, initials, math).
EXCLUDED_FAMILY_WORDS = ("symbol", "d050000l", "keyboard", "initials", "math")
MIN_TRAINING_GROUPS = 4
MIN_HELD_OUT_GROUPS = 2
FONT_SUFFIXES = (".ttf", ".otf")


class FontsMissingError(RuntimeError):
    """Too few font families are installed for the split."""


def family_name(font: Path) -> str:
    """The family name the font file declares (e.g. "DejaVu Sans Mono")."""
    from PIL import ImageFont

    name = ImageFont.truetype(str(font), 16).getname()[0]
    return str(name or font.stem)


def family_group(family: str) -> str:
    """The design group of a family name: its first word, clones folded into their original."""
    first = family.strip().split()[0].lower() if family.strip() else ""
    return GROUP_ALIASES.get(first, first)


def is_held_out_group(group: str) -> bool:
    """Whether a family group belongs to the held-out side (fixed list, hash for unknown ones)."""
    if group in HELD_OUT_GROUPS:
        return True
    if group in KNOWN_TRAINING_GROUPS:
        return False
    digest = hashlib.sha256(group.encode()).digest()
    return digest[0] % UNLISTED_HELD_OUT_MODULUS == 0


def _maps_digits(font: Path) -> bool:
    from fontTools.ttLib import TTFont

    try:
        with TTFont(str(font), lazy=True, fontNumber=0) as tt:
            cmap = tt.getBestCmap() or {}
    except Exception:  # an unreadable font file is simply not used
        return False
    return all(ord(d) in cmap for d in "0123456789")


@cache
def _catalogue(root: Path) -> tuple[tuple[Path, str], ...]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in FONT_SUFFIXES or not path.is_file():
            continue
        family = family_name(path)
        if any(word in family.lower() for word in EXCLUDED_FAMILY_WORDS):
            continue
        if _maps_digits(path):
            found.append((path, family_group(family)))
    return tuple(found)


def font_groups(root: Path = FONT_ROOT) -> dict[str, list[Path]]:
    """Usable font files under ``root`` by family group, each list sorted by path."""
    groups: dict[str, list[Path]] = {}
    for path, group in _catalogue(root):
        groups.setdefault(group, []).append(path)
    return groups


def _split(root: Path, held_out: bool) -> list[Path]:
    groups = font_groups(root)
    training = sorted(g for g in groups if not is_held_out_group(g))
    held = sorted(g for g in groups if is_held_out_group(g))
    if len(training) < MIN_TRAINING_GROUPS or len(held) < MIN_HELD_OUT_GROUPS:
        raise FontsMissingError(
            f"found {len(training)} training and {len(held)} held-out font families under "
            f"{root} (need {MIN_TRAINING_GROUPS} and {MIN_HELD_OUT_GROUPS}); install the Debian "
            f"packages: apt-get install {' '.join(FONT_PACKAGES)} (or run `make system-deps` "
            "as root)"
        )
    return [path for group in (held if held_out else training) for path in groups[group]]


def training_fonts(root: Path = FONT_ROOT) -> list[Path]:
    """Font files of the training family groups, sorted by group then path."""
    return _split(root, held_out=False)


def held_out_fonts(root: Path = FONT_ROOT) -> list[Path]:
    """Font files of the held-out family groups (never used for training), sorted likewise."""
    return _split(root, held_out=True)


@cache
def _load(font: Path, size_px: int) -> FreeTypeFont:
    from PIL import ImageFont

    # The basic layout engine: the same pixels whether or not libraqm is installed.
    return ImageFont.truetype(str(font), size_px, layout_engine=ImageFont.Layout.BASIC)


def render_text(
    font: Path,
    text: str,
    size_px: int,
    *,
    pad_px: int | None = None,
    stroke_px: int = 0,
    ink: int = 0,
    paper: int = 255,
) -> NDArray[np.uint8]:
    """Render ``text`` in ``font`` at ``size_px`` as a grayscale image (default dark on white).

    The canvas is the ink's bounding box plus ``pad_px`` on each side (a quarter of the size by
    default). ``stroke_px`` thickens the glyphs (a faux bold). Deterministic for a given font file.
    """
    from PIL import Image, ImageDraw

    face = _load(font, size_px)
    pad = size_px // 4 if pad_px is None else pad_px
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (0, 0), text, font=face, stroke_width=stroke_px
    )
    width = max(math.ceil(right - left), 1) + 2 * pad
    height = max(math.ceil(bottom - top), 1) + 2 * pad
    canvas = Image.new("L", (width, height), paper)
    ImageDraw.Draw(canvas).text(
        (pad - left, pad - top), text, fill=ink, font=face, stroke_width=stroke_px, stroke_fill=ink
    )
    return np.asarray(canvas, dtype=np.uint8).copy()


def render_digit(
    font: Path,
    digit: str,
    size_px: int,
    *,
    pad_px: int | None = None,
    stroke_px: int = 0,
    ink: int = 0,
    paper: int = 255,
) -> NDArray[np.uint8]:
    """One digit ("0".."9") typed in ``font``: dark ink on white paper unless told otherwise."""
    if len(digit) != 1 or digit not in "0123456789":
        raise ValueError(f"digit must be one of '0'..'9', got {digit!r}")
    return render_text(
        font, digit, size_px, pad_px=pad_px, stroke_px=stroke_px, ink=ink, paper=paper
    )
