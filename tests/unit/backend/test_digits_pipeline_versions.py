"""`digits` with classifier versions of different input kinds (8x8 and 28x28), pure logic."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlapi_backend import classifier_inputs
from mlapi_backend.classifier_inputs import NORMALISED_28X28, SCALED_8X8
from mlapi_backend.digits_pipeline import ClassifierError, DigitsPipeline, DigitsSettings
from mlapi_backend.errors import ModelConfigError
from mlapi_backend.model_config import ModelConfig, read_pbtxt

SHIPPED = Path(__file__).resolve().parents[3] / "model_repository"
V3_METRICS = {
    "temperature": 1.5,
    "low_confidence": {"min_score": 0.7, "max_not_a_digit": 0.2},
    "input": {"side": 28},
}


def _layout(root: Path, v3_metrics: dict | None = V3_METRICS) -> Path:
    """The shipped configs, version folders 1 and 2 without metrics, 3 with ``v3_metrics``.

    Built versions past 3 (make models' INT8 ones) are left out: these tests are about 1-3.
    """
    for model in ("digits", "digits_classifier"):
        ignore = shutil.ignore_patterns("*.onnx", "metrics.json", "__pycache__", "[4-9]")
        shutil.copytree(SHIPPED / model, root / model, ignore=ignore)
    for version in ("1", "2", "3"):
        (root / "digits_classifier" / version).mkdir(exist_ok=True)
    if v3_metrics is not None:
        (root / "digits_classifier" / "3" / "metrics.json").write_text(json.dumps(v3_metrics))
    return root


def _pipeline(root: Path, policy: str = '{"weights": {"2": 100}}') -> DigitsPipeline:
    raw = read_pbtxt(root / "digits" / "config.pbtxt")
    raw["parameters"]["traffic_policy"] = {"string_value": policy}
    settings = DigitsSettings.from_config(ModelConfig.from_json(raw), root / "digits")
    return DigitsPipeline(settings, random.Random(0))


class Backend:
    """Answers each version with a fixed probability row; records the input shapes it got."""

    def __init__(self, rows: dict[int, list[float]], live=(1, 2, 3)) -> None:
        self.rows, self.live = rows, set(live)
        self.calls: list[tuple[int, tuple[int, ...]]] = []
        self.shadows: list[tuple[int, ...]] = []

    def classify(self, version, pixels):
        self.calls.append((version, pixels.shape))
        if version not in self.live:
            raise ClassifierError(f"version {version} not loaded", unavailable=True)
        expected = 784 if version == 3 else 64
        assert pixels.shape[1] == expected, (version, pixels.shape)
        return np.tile(np.asarray(self.rows[version], dtype=np.float32), (len(pixels), 1))

    def live_versions(self, candidates):
        return [v for v in candidates if v in self.live]

    def record_routes(self, version, reason, count):
        pass

    def record_shadow(self, *counts):
        self.shadows.append(counts)


def _row(label: int, score: float, rest: float = 0.0) -> list[float]:
    row = np.full(10, (1.0 - score - rest) / 9, dtype=np.float64)
    row[label] = score
    return row.tolist()


CONFIDENT = {1: _row(1, 0.9), 2: _row(1, 0.9), 3: _row(1, 0.95, rest=0.01)}


def _one() -> np.ndarray:
    img = np.full((1, 64, 64), 235, dtype=np.uint8)
    img[0, 10:54, 29:36] = 15
    return img


def _meta(result) -> dict:
    return json.loads(result["metadata"][0, 0])


def test_each_version_gets_its_own_input_kind(tmp_path):
    pipeline = _pipeline(_layout(tmp_path))
    profiles = pipeline.settings.profiles
    assert {v: p.input_kind for v, p in profiles.items()} == {
        1: SCALED_8X8,
        2: SCALED_8X8,
        3: NORMALISED_28X28,
    }
    backend = Backend(CONFIDENT)
    parsed = [
        pipeline.parse(_one(), None),
        pipeline.parse(_one(), None, {"model_version": "3"}),
        pipeline.parse(np.concatenate([_one(), _one()]), None, {"model_version": "3"}),
    ]
    results = pipeline.run(parsed, backend)
    assert sorted(backend.calls) == [(2, (1, 64)), (3, (3, 784))]  # one call per version
    v2, v3 = _meta(results[0]), _meta(results[1])
    assert v2["preprocessing"]["method"] == SCALED_8X8
    assert v2["preprocessing"]["resized_to"] == [8, 8] and v2["max_not_a_digit"] is None
    assert v3["preprocessing"]["method"] == NORMALISED_28X28
    assert v3["preprocessing"]["resized_to"] == [28, 28]
    assert [s["name"] for s in v3["preprocessing"]["steps"]][:2] == ["work_scale", "polarity"]
    assert v3["preprocessing"]["inverted"] is True  # dark ink on light paper
    assert v3["low_confidence_threshold"] == 0.7 and v3["max_not_a_digit"] == 0.2
    assert v3["calibration"]["temperature"] == 1.5
    assert v3["top1_score"] == pytest.approx(0.95) and v3["low_confidence_reasons"] == []
    assert v3["not_a_digit_probability"] == pytest.approx(0.01, abs=1e-5)
    assert v3["ood_score"] == pytest.approx(-np.log(0.99), abs=1e-5)
    assert results[2]["labels"].shape == (2, 3)


def test_a_request_is_prepared_once_per_input_kind(tmp_path, monkeypatch):
    pipeline = _pipeline(_layout(tmp_path), '{"weights": {"2": 100}, "shadow": 3}')
    prepared: list[str] = []
    real = classifier_inputs.prepare

    def counting(kind, images):
        prepared.append(kind)
        return real(kind, images)

    monkeypatch.setattr(classifier_inputs, "prepare", counting)
    monkeypatch.setattr("mlapi_backend.digits_pipeline.prepare", counting)
    backend = Backend({**CONFIDENT, 3: _row(7, 0.95)})
    request = pipeline.parse(np.concatenate([_one(), _one()]), None)
    assert prepared == [SCALED_8X8]  # the routed version's kind, at parse time
    pipeline.run([request], backend)
    pipeline.respond(request, np.tile(np.float32(CONFIDENT[2]), (2, 1)))
    assert prepared == [SCALED_8X8, NORMALISED_28X28]  # the shadow's kind, once
    assert backend.calls == [(2, (2, 64)), (3, (2, 784))]
    assert backend.shadows == [(2, 3, 0, 2, 0)]


def test_a_fallback_to_a_version_of_another_kind_prepares_its_input(tmp_path):
    pipeline = _pipeline(_layout(tmp_path), '{"weights": {"3": 90, "2": 10}}')
    backend = Backend(CONFIDENT, live=(1, 2))  # 3 retired mid-flight
    parsed = [pipeline.parse(_one(), None, {"routing_key": f"user-{i}"}) for i in range(12)]
    assert 3 in {p.route.version for p in parsed}
    metas = [_meta(r) for r in pipeline.run(parsed, backend)]
    assert {m["classifier"]["version"] for m in metas} == {"2"}
    assert {m["preprocessing"]["method"] for m in metas} == {SCALED_8X8}
    assert (3, (sum(p.route.version == 3 for p in parsed), 784)) in backend.calls


@pytest.mark.parametrize(
    ("row", "reasons"),
    [
        (_row(4, 0.95, rest=0.01), []),
        (_row(4, 0.65, rest=0.01), ["top_score_below_threshold"]),
        (_row(4, 0.72, rest=0.25), ["not_a_digit_above_threshold"]),
        (_row(4, 0.3, rest=0.6), ["top_score_below_threshold", "not_a_digit_above_threshold"]),
    ],
)
def test_v3_low_confidence_uses_the_fitted_thresholds(tmp_path, row, reasons):
    pipeline = _pipeline(_layout(tmp_path))
    result = pipeline.run(
        [pipeline.parse(_one(), None, {"model_version": 3})], Backend({**CONFIDENT, 3: row})
    )[0]
    assert result["low_confidence"].tolist() == [[bool(reasons)]]
    assert _meta(result)["low_confidence_reasons"] == reasons


def _noise() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (1, 96, 96), dtype=np.uint8)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.full((1, 40, 40), 90, dtype=np.uint8), "blank_image"),
        (_noise(), "no_blob"),
    ],
)
def test_v3_flags_what_normalise_digit_flags_whatever_the_scores(tmp_path, image, reason):
    pipeline = _pipeline(_layout(tmp_path))
    result = pipeline.run([pipeline.parse(image, None, {"model_version": 3})], Backend(CONFIDENT))[
        0
    ]
    meta = _meta(result)
    assert result["low_confidence"].tolist() == [[True]]
    assert meta["low_confidence_reasons"] == [reason]
    assert meta["preprocessing"]["flag"] == reason.removesuffix("_image")


def test_v1_and_v2_keep_the_config_threshold_and_ignore_the_not_a_digit_mass(tmp_path):
    pipeline = _pipeline(_layout(tmp_path))
    backend = Backend({**CONFIDENT, 2: _row(4, 0.6, rest=0.35)})
    meta = _meta(pipeline.run([pipeline.parse(_one(), None)], backend)[0])
    assert meta["low_confidence_reasons"] == [] and meta["low_confidence_threshold"] == 0.5
    assert meta["calibration"] == {"temperature": None, "thresholds_from": "config"}


def test_a_28_version_without_thresholds_fails_the_load_naming_the_model(tmp_path):
    with pytest.raises(ModelConfigError, match=r"model 'digits'.*version 3.*low_confidence"):
        _pipeline(_layout(tmp_path, {"input": {"side": 28}}))
