"""Request handling of the public `digits` model, with a fake classifier (pure logic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlapi_backend.digits_pipeline import (
    ClassifierError,
    DigitsPipeline,
    DigitsSettings,
    ParsedRequest,
)
from mlapi_backend.errors import InvalidInputError, ModelConfigError
from mlapi_backend.model_config import ModelConfig

REPO = Path(__file__).resolve().parents[3] / "model_repository"


def _config(**parameters: str) -> ModelConfig:
    text = (REPO / "digits" / "config.pbtxt").read_text()
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    raw = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for key, value in parameters.items():
        raw["parameters"][key] = {"string_value": value}
    return ModelConfig.from_json(raw)


@pytest.fixture
def pipeline() -> DigitsPipeline:
    return DigitsPipeline(DigitsSettings.from_config(_config(), REPO / "digits"))


def _image(value: int = 255) -> np.ndarray:
    img = np.zeros((1, 16, 16), dtype=np.uint8)
    img[0, 3:13, 7:9] = value
    return img


def one_hot_classifier(label: int, score: float = 0.9):
    calls = []

    def classify(version: int, pixels: np.ndarray) -> np.ndarray:
        calls.append((version, pixels.shape))
        probs = np.full((len(pixels), 10), (1 - score) / 9, dtype=np.float32)
        probs[:, label] = score
        return probs

    classify.calls = calls  # type: ignore[attr-defined]
    return classify


def test_shipped_config_settings(pipeline):
    s = pipeline.settings
    assert s.labels == tuple(str(d) for d in range(10))
    assert (s.default_top_k, s.max_top_k, s.threshold) == (3, 10, 0.5)
    assert s.classifier_name == "digits_classifier"


def test_one_classifier_call_per_version_for_a_whole_batch(pipeline):
    classify = one_hot_classifier(7)
    parsed = [
        pipeline.parse(_image(), None),
        pipeline.parse(np.concatenate([_image(), _image()]), None),
    ]
    results = pipeline.run(parsed, classify)
    assert classify.calls == [(pipeline.settings.default_version, (3, 64))]
    assert results[1]["labels"].shape == (2, 3)
    assert results[0]["labels"][0].tolist() == [b"7", b"0", b"1"]
    meta = json.loads(results[0]["metadata"][0, 0])
    assert meta["classifier"] == {
        "name": "digits_classifier",
        "version": str(pipeline.settings.default_version),
    }
    assert meta["routing"] == "default"
    assert meta["low_confidence_threshold"] == 0.5
    assert meta["top1_margin"] == pytest.approx(0.9 - 0.1 / 9, abs=1e-5)
    assert meta["preprocessing"]["original_size"] == [16, 16]


def test_low_confidence_flag_follows_threshold(pipeline):
    low = pipeline.run([pipeline.parse(_image(), None)], one_hot_classifier(3, score=0.4))[0]
    high = pipeline.run([pipeline.parse(_image(), None)], one_hot_classifier(3, score=0.6))[0]
    assert low["low_confidence"].tolist() == [[True]]
    assert high["low_confidence"].tolist() == [[False]]
    assert json.loads(low["metadata"][0, 0])["low_confidence_reasons"] == [
        "top_score_below_threshold"
    ]


def test_top_k_controls_output_width(pipeline):
    result = pipeline.run(
        [pipeline.parse(_image(), np.array([[10]], dtype=np.int32))], one_hot_classifier(1)
    )[0]
    assert result["labels"].shape == (1, 10) and result["scores"].shape == (1, 10)
    assert np.all(np.diff(result["scores"][0]) <= 0)


@pytest.mark.parametrize(
    ("image", "top_k", "field", "fragment"),
    [
        (None, None, "image", "no 'image' input"),
        (np.zeros((0, 8, 8), dtype=np.uint8), None, "image", "batch >= 1"),
        (np.zeros((8, 8), dtype=np.uint8), None, "image", "shape [batch, height, width]"),
        (_image(), np.array([[0]], dtype=np.int32), "top_k", "1..10"),
        (_image(), np.array([[11]], dtype=np.int32), "top_k", "got 11"),
        (
            np.concatenate([_image(), _image()]),
            np.array([[1], [2]], dtype=np.int32),
            "top_k",
            "one value",
        ),
        (np.zeros((1, 4, 4), dtype=np.uint8), None, "image", "4x4"),
    ],
)
def test_invalid_requests_name_the_field(pipeline, image, top_k, field, fragment):
    with pytest.raises(InvalidInputError) as info:
        pipeline.parse(image, top_k)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_invalid_request_does_not_affect_batch_mates(pipeline):
    classify = one_hot_classifier(5)
    error = InvalidInputError("image", "x", "y")
    parsed: list[ParsedRequest | Exception] = [
        pipeline.parse(_image(), None),
        error,
        pipeline.parse(_image(), None),
    ]
    results = pipeline.run(parsed, classify)
    assert results[1] is error
    assert results[0]["labels"][0, 0] == b"5" and results[2]["labels"][0, 0] == b"5"
    assert len(classify.calls) == 1 and classify.calls[0][1] == (2, 64)


def test_classifier_failure_fails_only_its_requests(pipeline):
    def failing(version: int, pixels: np.ndarray) -> np.ndarray:
        raise ClassifierError("boom")

    results = pipeline.run([pipeline.parse(_image(), None)], failing)
    assert isinstance(results[0], ClassifierError)


def test_bad_parameters_fail_load():
    with pytest.raises(ModelConfigError, match="low_confidence_threshold"):
        DigitsSettings.from_config(_config(low_confidence_threshold="1.5"), REPO / "digits")
    with pytest.raises(ModelConfigError, match="cannot read labels"):
        DigitsSettings.from_config(_config(classifier_labels="nope.txt"), REPO / "digits")
    with pytest.raises(ModelConfigError, match="max_top_k"):
        DigitsSettings.from_config(_config(max_top_k="11"), REPO / "digits")


def test_digits_batch_never_exceeds_classifier_batch():
    classifier = (REPO / "digits_classifier" / "config.pbtxt").read_text()
    digits_max = _config().max_batch_size
    classifier_max = int(classifier.split("max_batch_size:")[1].split()[0])
    assert digits_max <= classifier_max
