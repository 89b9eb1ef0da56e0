"""The font split (by family group, deterministic) and digit rendering."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mlapi_tools.build import fonts


@pytest.fixture(scope="module")
def split() -> tuple[list[Path], list[Path]]:
    try:
        return fonts.training_fonts(), fonts.held_out_fonts()
    except fonts.FontsMissingError as exc:
        pytest.skip(str(exc))


def test_split_is_disjoint_by_family_group(split: tuple[list[Path], list[Path]]) -> None:
    training, held_out = split
    train_groups = {fonts.family_group(fonts.family_name(p)) for p in training}
    held_groups = {fonts.family_group(fonts.family_name(p)) for p in held_out}
    assert len(train_groups) >= fonts.MIN_TRAINING_GROUPS
    assert len(held_groups) >= fonts.MIN_HELD_OUT_GROUPS
    assert not train_groups & held_groups
    assert not set(training) & set(held_out)


def test_clones_follow_the_design_they_copy() -> None:
    assert fonts.family_group("Arimo") == fonts.family_group("Liberation Sans")
    assert fonts.family_group("FreeSans") == fonts.family_group("Nimbus Sans") == "urw"
    assert fonts.family_group("Hack") == fonts.family_group("DejaVu Sans Mono")
    assert fonts.family_group("Oxygen-Sans") == fonts.family_group("Oxygen Mono")
    assert fonts.is_held_out_group("roboto") and not fonts.is_held_out_group("dejavu")


def test_split_is_deterministic(split: tuple[list[Path], list[Path]]) -> None:
    fonts._catalogue.cache_clear()
    assert (fonts.training_fonts(), fonts.held_out_fonts()) == split


def test_too_few_fonts_names_the_packages(tmp_path: Path) -> None:
    with pytest.raises(fonts.FontsMissingError, match=r"fonts-dejavu-core.*fonts-liberation2"):
        fonts.training_fonts(tmp_path)


def test_split_of_a_small_root(tmp_path: Path, split: tuple[list[Path], list[Path]]) -> None:
    # Fonts of 4 training groups and 2 held-out groups copied under another root: the same
    # assignment of each file's group, whatever else is installed.
    training, held_out = split
    picked: dict[str, Path] = {}
    for path in training + held_out:
        picked.setdefault(fonts.family_group(fonts.family_name(path)), path)
    train_pick = [g for g in picked if not fonts.is_held_out_group(g)][:4]
    held_pick = [g for g in picked if fonts.is_held_out_group(g)][:2]
    for group in train_pick + held_pick:
        shutil.copy(picked[group], tmp_path / f"{group}{picked[group].suffix}")
    got_train = {fonts.family_group(fonts.family_name(p)) for p in fonts.training_fonts(tmp_path)}
    got_held = {fonts.family_group(fonts.family_name(p)) for p in fonts.held_out_fonts(tmp_path)}
    assert got_train == set(train_pick)
    assert got_held == set(held_pick)


def test_render_digit_is_deterministic_dark_on_white(
    split: tuple[list[Path], list[Path]],
) -> None:
    font = split[1][0]
    first = fonts.render_digit(font, "6", 40)
    fonts._load.cache_clear()
    again = fonts.render_digit(font, "6", 40)
    assert first.dtype == np.uint8 and first.ndim == 2
    assert np.array_equal(first, again)
    assert first[0, 0] == 255 and first.min() == 0
    # The bounding box plus the default padding: the ink touches no border.
    pad = 40 // 4
    assert (first[:pad] == 255).all() and (first[-pad:] == 255).all()
    inverted = fonts.render_digit(font, "6", 40, ink=255, paper=0)
    assert np.array_equal(inverted, 255 - first)
    bold = fonts.render_digit(font, "6", 40, stroke_px=2)
    assert (bold < 128).sum() > (first < 128).sum()


def test_render_digit_refuses_non_digits(split: tuple[list[Path], list[Path]]) -> None:
    with pytest.raises(ValueError, match="digit"):
        fonts.render_digit(split[0][0], "A", 20)


def test_the_makefile_installs_the_font_packages() -> None:
    lines = (Path(__file__).resolve().parents[4] / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("FONT_PACKAGES :="))
    words: list[str] = []
    for line in lines[start:]:
        words += line.removeprefix("FONT_PACKAGES :=").rstrip("\\").split()
        if not line.endswith("\\"):
            break
    assert tuple(words) == fonts.FONT_PACKAGES
