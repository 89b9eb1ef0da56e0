"""Classifier version 3 served through `digits` on the evaluation sets: every figure is
reported against the targets, and held to a floor below which version 3 has regressed.

Version 3 does not meet every target yet (docs/models.md): the misses are reported as figures,
and the assertions are the floors it met when it was shipped (with room for the sampling noise
of 100 images a set), so a worse model fails here.

The sets of mlapi_tools.eval (held-out digits, typed digits in held-out fonts, distortions, and
things that are not digits), smaller than `make eval`'s, over HTTP and gRPC against the session's
real server, pinned to version 3 with the request parameter ``model_version``.
"""

from __future__ import annotations

from functools import cache

import pytest

from mlapi_tools.eval import runner, sets
from mlapi_tools.eval.report import summarise
from mlapi_tools.eval.scoring import TARGETS

from .conftest import MODEL_REPOSITORY

VERSION = 3
# 100 images a set: one silent error is 1% (the target's limit), three misses 3%.
PER_SET = 100
# Floors: the shipped version 3 measured 93-99% accuracy and 0-6% silent errors on the digit
# sets, 85-100% of the non-digit sets flagged and ECE 0.013; a set of 100 moves by a few points.
# Retrained with the Liberation fonts Chromium brings (system-deps), photos were 77% flagged.
FLOORS = {"accuracy_min": 0.90, "silent_errors_max": 0.08, "non_digits_flagged_min": 0.75,
          "ece_max": 0.05}  # fmt: skip


def _built() -> bool:
    folder = MODEL_REPOSITORY / "digits_classifier" / str(VERSION)
    return (folder / "model.onnx").is_file() and (folder / "metrics.json").is_file()


pytestmark = pytest.mark.skipif(
    not _built(),
    reason=f"digits_classifier version {VERSION} is not built (model.onnx and metrics.json "
    f"under model_repository/digits_classifier/{VERSION}; `make models` builds it)",
)


@cache
def _sets() -> tuple[sets.EvalSet, ...]:
    return tuple(sets.build_sets(PER_SET))


@pytest.fixture(params=["http", "grpc"])
def summary(request: pytest.FixtureRequest, triton) -> dict:
    url = f"http://{triton.http_url}" if request.param == "http" else f"grpc://{triton.grpc_url}"
    results = runner.evaluate(url, [VERSION], _sets(), progress=False)
    return summarise(results, {"protocol": request.param})["versions"][str(VERSION)]


def test_v3_against_its_targets_and_its_floors_on_every_set(summary, report_figure):
    misses, below = [], []
    for name, figures in summary["sets"].items():
        if figures["is_digit"]:
            report_figure(
                f"digits v3 {name}",
                f"accuracy {figures['accuracy']:.3f}, silent {figures['silent_errors']:.3f}, "
                f"flagged {figures['flagged']:.3f}",
            )
        else:
            report_figure(f"digits v3 {name}", f"flagged {figures['flagged']:.3f}")
        misses += [f"{name}: {target}" for target, ok in figures["targets_met"].items() if not ok]
        if figures["is_digit"]:
            if figures["accuracy"] < FLOORS["accuracy_min"]:
                below.append(f"{name}: accuracy {figures['accuracy']:.3f}")
            if figures["silent_errors"] > FLOORS["silent_errors_max"]:
                below.append(f"{name}: silent errors {figures['silent_errors']:.3f}")
        elif figures["flagged"] < FLOORS["non_digits_flagged_min"]:
            below.append(f"{name}: flagged {figures['flagged']:.3f}")
    pooled = summary["digit_sets_pooled"]
    report_figure("digits v3 digit sets pooled", f"ECE {pooled['ece']:.4f}")
    if pooled["ece"] > TARGETS["ece_max"]:
        misses.append(f"ECE {pooled['ece']:.4f} over the digit sets")
    if pooled["ece"] > FLOORS["ece_max"]:
        below.append(f"ECE {pooled['ece']:.4f}")
    report_figure("digits v3 targets missed", "; ".join(misses) or "none")
    assert not below, "v3 fell below its floors on: " + "; ".join(below)


def test_v3_answers_carry_its_preprocessing_and_thresholds(triton):
    from mlapi_client import Client

    digit = sets.build_set("typed", 1).images[0]
    with Client(triton.http_url) as client:
        result = client.digits(digit, version=VERSION)
        blank = client.digits(sets.build_set("blank", 1).images[0], version=VERSION)
    meta = result.metadata
    assert meta["classifier"]["version"] == "3" and meta["routing"] == "pinned"
    assert meta["preprocessing"]["method"] == "normalised_28x28"
    assert meta["preprocessing"]["resized_to"] == [28, 28]
    assert [s["name"] for s in meta["preprocessing"]["steps"]][-1] == "centre"
    assert meta["max_not_a_digit"] is not None and meta["calibration"]["temperature"] is not None
    assert {"top1_score", "ood_score", "not_a_digit_probability"} <= set(meta)
    assert blank.low_confidence and "blank_image" in blank.metadata["low_confidence_reasons"]
