"""The digits evaluation: its sets are deterministic and held out, its figures are right."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from mlapi_tools.build import fonts
from mlapi_tools.build.digits_data import load_split
from mlapi_tools.eval import report, sets
from mlapi_tools.eval.__main__ import parser
from mlapi_tools.eval.runner import SetResult
from mlapi_tools.eval.scoring import (
    Answers,
    confusion_matrix,
    expected_calibration_error,
    meets_targets,
    set_figures,
)

ROOT = Path(__file__).resolve().parents[4]


def test_every_set_is_the_same_every_time_and_sets_differ():
    first = sets.build_sets(6)
    second = sets.build_sets(6)
    assert [s.name for s in first] == list(sets.SET_NAMES)
    for a, b in zip(first, second, strict=True):
        assert len(a) == 6 and a.labels.tolist() == b.labels.tolist()
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
        assert all(img.dtype == np.uint8 and img.ndim == 2 for img in a.images)
        assert all(min(img.shape) >= 8 and max(img.shape) <= 1024 for img in a.images)
        assert (a.labels >= 0).all() if a.is_digit else (a.labels == sets.NOT_A_DIGIT).all()
    shapes = {s.name: tuple(img.shape for img in s.images) for s in first}
    assert len(set(shapes.values())) > len(shapes) // 2  # not one stream copied across sets


def test_handwritten_digits_come_from_the_held_out_split_only():
    split = load_split()
    held_out = {row.tobytes() for row in np.rint(split.test_x * 255 / 16).astype(np.uint8)}
    training = {row.tobytes() for row in np.rint(split.train_x * 255 / 16).astype(np.uint8)}
    images = sets.handwritten_8x8(450).images
    assert all(img.reshape(-1).tobytes() in held_out for img in images)
    assert not any(img.reshape(-1).tobytes() in training for img in images)


def test_typed_sets_use_held_out_font_families_only(monkeypatch):
    used = []
    render = fonts.render_text

    def spy(font, *args, **kwargs):
        used.append(font)
        return render(font, *args, **kwargs)

    monkeypatch.setattr(fonts, "render_text", spy)
    for name in ("typed", "letters", "symbols"):
        sets.build_set(name, 10)
    assert used and set(used) <= set(fonts.held_out_fonts())
    assert not set(used) & set(fonts.training_fonts())


def test_an_unknown_set_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="handwritten_8x8"):
        sets.build_set("handwritting", 3)


def test_ece_of_perfectly_calibrated_and_of_overconfident_answers():
    confidence = np.array([0.8] * 10 + [1.0] * 5)
    correct = np.array([True] * 8 + [False] * 2 + [True] * 5)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)
    overconfident = np.full(10, 0.95)
    half = np.array([True, False] * 5)
    assert expected_calibration_error(overconfident, half) == pytest.approx(0.45)
    assert np.isnan(expected_calibration_error(np.array([]), np.array([], dtype=bool)))


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    matrix = confusion_matrix(np.array([1, 1, 2, 3]), np.array([1, 7, 2, -1]))
    assert matrix[1, 1] == 1 and matrix[1, 7] == 1 and matrix[2, 2] == 1
    assert matrix.sum() == 3  # the answer without a digit label is left out


def _answers(labels, scores, flagged):
    reasons = [["top_score_below_threshold"] if f else [] for f in flagged]
    return Answers.collect(list(zip(labels, scores, flagged, reasons, strict=True)))


def test_set_figures_separate_silent_errors_from_flagged_ones():
    truth = np.array([0, 1, 2, 3])
    answers = _answers([0, 1, 5, 6], [0.9, 0.9, 0.9, 0.3], [False, False, False, True])
    figures = set_figures(True, truth, answers)
    assert figures["accuracy"] == 0.5
    assert figures["silent_errors"] == 0.25  # the 2 read as 5, unflagged
    assert figures["flagged"] == 0.25
    assert figures["reasons"] == {"top_score_below_threshold": 1}
    assert meets_targets(True, figures) == {
        "accuracy": False,
        "silent_errors": False,
        "flagged": False,
    }
    junk = set_figures(False, np.full(4, -1), answers)
    assert "accuracy" not in junk and meets_targets(False, junk) == {"flagged": False}


def test_report_writes_json_markdown_and_plots(tmp_path):
    digits = sets.handwritten_8x8(20)
    noise = sets.build_set("noise", 10)
    results = [
        SetResult(3, digits, _answers(digits.labels.tolist(), [0.99] * 20, [False] * 20)),
        SetResult(3, noise, _answers([4] * 10, [0.2] * 10, [True] * 10)),
    ]
    summary = report.write(results, {"revision": "test", "per_set": 20}, tmp_path)
    v3 = json.loads((tmp_path / "results.json").read_text())["versions"]["3"]
    assert v3["all_targets_met"] is True
    assert v3["sets"]["handwritten_8x8"]["accuracy"] == 1.0
    assert v3["sets"]["noise"]["flagged"] == 1.0
    assert v3["digit_sets_pooled"]["ece"] == pytest.approx(0.01)
    assert "| noise | not digit | 10 |" in (tmp_path / "results.md").read_text()
    assert {p.rsplit("/", 1)[-1] for p in summary["plots"]} == {
        "reliability_v3.png",
        "confusion_v3.png",
    }  # no misses: no mosaic
    assert v3["sets"]["noise"]["misses"] == []
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("reliability_v3.png",))
    assert "versions compared" not in (tmp_path / "results.md").read_text()


def test_report_compares_versions_side_by_side(tmp_path):
    digits = sets.handwritten_8x8(10)
    truth = digits.labels.tolist()
    wrong = [(label + 1) % 10 for label in truth]
    results = [
        SetResult(2, digits, _answers(wrong, [0.9] * 10, [False] * 10)),
        SetResult(3, digits, _answers(truth, [0.9] * 10, [False] * 10)),
    ]
    text = report.markdown(report.summarise(results, {"revision": "test", "per_set": 10}))
    assert report.misses(results[0]) == list(range(10)) and report.misses(results[1]) == []
    assert report.misses_mosaic(results, 2, tmp_path / "misses_v2.png")
    assert not report.misses_mosaic(results, 3, tmp_path / "misses_v3.png")
    assert "| handwritten_8x8 | 0.0% / 100.0% | 100.0% / 0.0% |" in text
    assert "| ECE, digit sets | 0.9000 | 0.1000 |" in text


def test_command_line_takes_what_make_eval_passes():
    recipe = next(
        line
        for line in (ROOT / "tools" / "eval.mk").read_text().splitlines()
        if "-m mlapi_tools.eval" in line
    )
    argv = shlex.split(
        recipe.split("-m mlapi_tools.eval", 1)[1].replace("$(REPO)", "model_repository")
    )
    args = parser().parse_args(argv)
    assert (str(args.repository), str(args.out), args.url, args.versions) == (
        "model_repository",
        "build/eval",
        None,
        None,
    )
    assert parser().parse_args(["digits", "--versions", "3,1"]).versions == [1, 3]
    with pytest.raises(SystemExit):
        parser().parse_args(["digits", "--versions", "x"])
