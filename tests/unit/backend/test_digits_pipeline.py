"""Request handling of the public `digits` model, with a fake classifier (pure logic)."""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlapi_backend.classifier_repository import served_versions
from mlapi_backend.digits_pipeline import (
    ClassifierError,
    DigitsPipeline,
    DigitsSettings,
    ParsedRequest,
)
from mlapi_backend.errors import InvalidInputError, ModelConfigError, UnavailableError
from mlapi_backend.failure_log import FailureLog
from mlapi_backend.model_config import ModelConfig, read_pbtxt
from mlapi_backend.triton_responses import respond
from tests.unit.backend import fake_triton

SHIPPED = Path(__file__).resolve().parents[3] / "model_repository"
REPO = SHIPPED  # replaced by the built layout below, for every test of this module


@pytest.fixture(scope="module", autouse=True)
def _built_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The shipped configs in the layout `make models` leaves: version folders 1 and 2.

    A fresh clone has no version folders (they hold only built .onnx files, which git ignores),
    and this pure logic must not need a build, so the tests read a copy with empty folders.
    """
    built = tmp_path_factory.mktemp("model_repository")
    for model in ("digits", "digits_classifier"):
        weights = shutil.ignore_patterns("*.onnx", "metrics.json", "__pycache__")
        shutil.copytree(SHIPPED / model, built / model, ignore=weights)
    for version in ("1", "2"):
        (built / "digits_classifier" / version).mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.modules[__name__], "REPO", built)
        yield


def _config(**parameters: str) -> ModelConfig:
    raw = read_pbtxt(REPO / "digits" / "config.pbtxt")
    for key, value in parameters.items():
        raw["parameters"][key] = {"string_value": value}
    return ModelConfig.from_json(raw)


@pytest.fixture
def pipeline() -> DigitsPipeline:
    return _pipeline()


def _image(value: int = 255) -> np.ndarray:
    img = np.zeros((1, 16, 16), dtype=np.uint8)
    img[0, 3:13, 7:9] = value
    return img


class FakeBackend:
    """Pure-logic stand-in for the BLS classifier: fixed answers, recorded calls."""

    def __init__(self, label: int = 7, score: float = 0.9, live=(1, 2), answers=None) -> None:
        self.label, self.score, self.live = label, score, set(live)
        self.answers = answers or {}
        self.calls: list[tuple[int, tuple[int, ...]]] = []
        self.routes: list[tuple[int, str, int]] = []
        self.shadows: list[tuple[int, int, int, int, int]] = []

    def classify(self, version, pixels):
        self.calls.append((version, pixels.shape))
        if version not in self.live:
            raise ClassifierError(f"version {version} not loaded", unavailable=True)
        label = self.answers.get(version, self.label)
        probs = np.full((len(pixels), 10), (1 - self.score) / 9, dtype=np.float32)
        probs[:, label] = self.score
        return probs

    def live_versions(self, candidates):
        return [v for v in candidates if v in self.live]

    def record_routes(self, version, reason, count):
        self.routes.append((version, reason, count))

    def record_shadow(self, primary, shadow, agreed, disagreed, failed):
        self.shadows.append((primary, shadow, agreed, disagreed, failed))


def _pipeline(**parameters: str) -> DigitsPipeline:
    return DigitsPipeline(
        DigitsSettings.from_config(_config(**parameters), REPO / "digits"), random.Random(0)
    )


def test_shipped_config_settings(pipeline):
    s = pipeline.settings
    assert s.default_version == 2 and s.policy.shadow is None
    assert s.labels == tuple(str(d) for d in range(10))
    assert (s.default_top_k, s.max_top_k, s.threshold) == (3, 10, 0.5)
    assert s.classifier_name == "digits_classifier"


def test_one_classifier_call_per_version_for_a_whole_batch(pipeline):
    backend = FakeBackend(7)
    parsed = [
        pipeline.parse(_image(), None),
        pipeline.parse(np.concatenate([_image(), _image()]), None),
    ]
    results = pipeline.run(parsed, backend)
    assert backend.calls == [(pipeline.settings.default_version, (3, 64))]
    assert backend.routes == [(2, "default", 3)]  # one update per reason: 1 + 2 images
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
    low = pipeline.run([pipeline.parse(_image(), None)], FakeBackend(3, score=0.4))[0]
    high = pipeline.run([pipeline.parse(_image(), None)], FakeBackend(3, score=0.6))[0]
    assert low["low_confidence"].tolist() == [[True]]
    assert high["low_confidence"].tolist() == [[False]]
    assert json.loads(low["metadata"][0, 0])["low_confidence_reasons"] == [
        "top_score_below_threshold"
    ]


def test_top_k_controls_output_width(pipeline):
    result = pipeline.run(
        [pipeline.parse(_image(), np.array([[10]], dtype=np.int32))], FakeBackend(1)
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
    backend = FakeBackend(5)
    error = InvalidInputError("image", "x", "y")
    parsed: list[ParsedRequest | Exception] = [
        pipeline.parse(_image(), None),
        error,
        pipeline.parse(_image(), None),
    ]
    results = pipeline.run(parsed, backend)
    assert results[1] is error
    assert results[0]["labels"][0, 0] == b"5" and results[2]["labels"][0, 0] == b"5"
    assert len(backend.calls) == 1 and backend.calls[0][1] == (2, 64)


def test_classifier_failure_fails_only_its_requests():
    pipeline = _pipeline(traffic_policy='{"weights": {"1": 50, "2": 50}}')

    class Failing(FakeBackend):
        def classify(self, version, pixels):
            if version == 1:
                raise ClassifierError("boom")
            return super().classify(version, pixels)

    pinned = [pipeline.parse(_image(), None, {"model_version": v}) for v in (1, 2)]
    results = pipeline.run(pinned, Failing())
    assert isinstance(results[0], ClassifierError)
    assert results[1]["labels"][0, 0] == b"7"


def test_pinned_version_overrides_policy_and_is_reported():
    pipeline = _pipeline()
    backend = FakeBackend(answers={1: 4, 2: 6})
    results = pipeline.run([pipeline.parse(_image(), None, {"model_version": "1"})], backend)
    meta = json.loads(results[0]["metadata"][0, 0])
    assert (meta["classifier"]["version"], meta["routing"]) == ("1", "pinned")
    assert results[0]["labels"][0, 0] == b"4"


def test_pinned_unloaded_version_is_an_invalid_input_naming_live_versions():
    pipeline = _pipeline()
    results = pipeline.run([pipeline.parse(_image(), None, {"model_version": 7})], FakeBackend())
    assert isinstance(results[0], InvalidInputError)
    assert results[0].field == "model_version"
    assert "[1, 2]" in str(results[0]) and "7" in str(results[0])


def test_routed_request_falls_back_when_its_version_is_retired():
    pipeline = _pipeline(traffic_policy='{"weights": {"1": 50, "3": 50}}')
    backend = FakeBackend(live=(1, 2))
    parsed = [pipeline.parse(_image(), None, {"routing_key": f"user-{i}"}) for i in range(40)]
    assert {p.route.version for p in parsed} == {1, 3}
    results = pipeline.run(parsed, backend)
    metas = [json.loads(r["metadata"][0, 0]) for r in results]
    assert all(m["classifier"]["version"] == "1" for m in metas)
    assert {m["routing"] for m in metas} == {"sticky", "fallback"}


def test_no_live_alternative_makes_the_routed_requests_unavailable():
    pipeline = _pipeline(traffic_policy='{"weights": {"3": 100}}')
    results = pipeline.run([pipeline.parse(_image(), None)], FakeBackend(live=()))
    assert isinstance(results[0], UnavailableError)
    assert "version 3" in str(results[0]) and "no live version" in str(results[0])


def test_pinned_configured_version_that_is_not_ready_is_unavailable_naming_it():
    """Version 1 is in the classifier's version_policy but failed to load: 503, not 400."""
    pipeline = _pipeline()
    assert {1, 2} <= pipeline.settings.classifier_versions  # as the shipped config names them
    backend = FakeBackend(live=(2,))
    pinned = [pipeline.parse(_image(), None, {"model_version": v}) for v in ("1", "9", "2")]
    configured, unknown, served = pipeline.run(pinned, backend)
    assert isinstance(configured, UnavailableError)
    assert "version 1 is configured but not ready" in str(configured)
    assert "live versions: [2]" in str(configured)
    assert isinstance(unknown, InvalidInputError) and unknown.field == "model_version"
    assert "[2]" in str(unknown) and "9" in str(unknown)
    assert served["labels"][0, 0] == b"7"


def test_overloaded_classifier_makes_its_requests_unavailable(pipeline):
    class Shedding(FakeBackend):
        def classify(self, version, pixels):
            raise ClassifierError(
                "digits_classifier version 2 failed: [request id: <id_unknown>] "
                "Exceeds maximum queue size",
                overloaded=True,
            )

    results = pipeline.run([pipeline.parse(_image(), None)], Shedding())
    assert isinstance(results[0], UnavailableError)
    assert str(results[0]).endswith("] Exceeds maximum queue size")  # what clients key on


def test_check_policy_refuses_a_policy_naming_a_dead_version():
    pipeline = _pipeline(traffic_policy='{"weights": {"3": 100}}')
    with pytest.raises(ModelConfigError, match=r"version\(s\) \[3\].*live versions: \[1, 2\]"):
        pipeline.check_policy(FakeBackend(live=(1, 2)))
    shadowed = _pipeline(traffic_policy='{"weights": {"2": 100}, "shadow": 5}')
    with pytest.raises(ModelConfigError, match=r"\[5\]"):
        shadowed.check_policy(FakeBackend(live=(1, 2)))
    canary = _pipeline(traffic_policy='{"weights": {"1": 90, "2": 10}}')
    assert canary.check_policy(FakeBackend(live=(1, 2))) == [1, 2]


def test_the_repository_policy_is_not_checked_at_load():
    """It loads at server start-up, when readiness checks are refused: checked per request."""
    pipeline = _pipeline()
    assert pipeline.settings.repository_policy == pipeline.settings.policy
    assert pipeline.check_policy(_StartingServer()) is None
    assert pipeline.check_policy(FakeBackend(live=(1,))) is None


def test_check_policy_is_deferred_while_the_classifier_has_no_ready_version():
    pipeline = _pipeline(traffic_policy='{"weights": {"3": 100}}')
    assert pipeline.check_policy(FakeBackend(live=())) == []
    assert pipeline.check_policy(_StartingServer()) is None


class _StartingServer(FakeBackend):
    """Triton refuses readiness checks while it is still loading its models."""

    def live_versions(self, candidates):
        raise ClassifierError("Server not ready", unavailable=True)


def test_a_failing_readiness_check_never_fails_the_batch():
    pipeline = _pipeline()
    pinned = [pipeline.parse(_image(), None, {"model_version": v}) for v in ("1", "9")]
    configured, unknown = pipeline.run(pinned, _StartingServer(live=()))
    assert isinstance(configured, UnavailableError) and "live versions: []" in str(configured)
    assert isinstance(unknown, InvalidInputError)


@pytest.mark.parametrize(
    ("policy", "folders", "expected"),
    [
        ({"specific": {"versions": ["1", "3"]}}, [1, 2, 3], {1, 3}),
        ({"all": {}}, [1, 2, 5], {1, 2, 5}),
        ({"latest": {"num_versions": 2}}, [1, 2, 5], {2, 5}),
        ({}, [1, 2, 5], {5}),
        ({}, [], set()),
    ],
)
def test_served_versions_follow_the_version_policy(policy, folders, expected):
    assert served_versions(policy, folders) == expected


def test_no_classifier_config_beside_the_model_means_no_configured_versions(tmp_path):
    (tmp_path / "digits").mkdir()
    labels = REPO / "digits_classifier" / "labels.txt"
    settings = DigitsSettings.from_config(
        _config(classifier_labels=str(labels)), tmp_path / "digits"
    )
    assert settings.classifier_versions == frozenset()
    assert settings.configured_versions == {2}


def test_weighted_split_and_sticky_keys():
    pipeline = _pipeline(traffic_policy='{"weights": {"1": 80, "2": 20}}')
    draws = [pipeline.parse(_image(), None).route for _ in range(2000)]
    assert {r.reason for r in draws} == {"weighted"}
    share = sum(r.version == 1 for r in draws) / len(draws)
    assert abs(share - 0.8) < 0.03
    for key in ("a", "b", "user-42"):
        versions = {
            pipeline.parse(_image(), None, {"routing_key": key}).route.version for _ in range(20)
        }
        assert len(versions) == 1


def test_shadow_copy_is_compared_and_discarded():
    pipeline = _pipeline(traffic_policy='{"weights": {"2": 100}, "shadow": 1}')
    backend = FakeBackend(answers={1: 3, 2: 6})
    batch = np.concatenate([_image()] * 3)
    results = pipeline.run([pipeline.parse(batch, None)], backend)
    assert [c[0] for c in backend.calls] == [2, 1]
    assert results[0]["labels"][:, 0].tolist() == [b"6"] * 3  # served answer, not the shadow's
    assert backend.shadows == [(2, 1, 0, 3, 0)]
    agreeing = FakeBackend(answers={1: 6, 2: 6})
    pipeline.run([pipeline.parse(batch, None)], agreeing)
    assert agreeing.shadows == [(2, 1, 3, 0, 0)]


def test_shadow_failure_never_fails_the_request():
    pipeline = _pipeline(traffic_policy='{"weights": {"2": 100}, "shadow": 5}')
    backend = FakeBackend()
    results = pipeline.run([pipeline.parse(_image(), None)], backend)
    assert results[0]["labels"][0, 0] == b"7"
    assert backend.shadows == [(2, 5, 0, 0, 1)]


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"model_version": "x"}, "model_version"),
        ({"model_version": 0}, "model_version"),
        ({"model_version": True}, "model_version"),
        ({"model_version": "1.5"}, "model_version"),
        ({"routing_key": ""}, "routing_key"),
        ({"routing_key": 5}, "routing_key"),
        ({"routing_key": "k" * 257}, "routing_key"),
    ],
)
def test_bad_routing_parameters_are_invalid_input(pipeline, parameters, field):
    with pytest.raises(InvalidInputError) as info:
        pipeline.parse(_image(), None, parameters)
    assert info.value.field == field


def test_bad_parameters_fail_load():
    with pytest.raises(ModelConfigError, match="low_confidence_threshold"):
        DigitsSettings.from_config(_config(low_confidence_threshold="1.5"), REPO / "digits")
    with pytest.raises(ModelConfigError, match="cannot read labels"):
        DigitsSettings.from_config(_config(classifier_labels="nope.txt"), REPO / "digits")
    with pytest.raises(ModelConfigError, match="max_top_k"):
        DigitsSettings.from_config(_config(max_top_k="11"), REPO / "digits")
    with pytest.raises(ModelConfigError, match="traffic_policy"):
        DigitsSettings.from_config(_config(traffic_policy='{"weights": {}}'), REPO / "digits")
    with pytest.raises(ModelConfigError, match="max_side_px"):
        DigitsSettings.from_config(_config(min_side_px="64", max_side_px="32"), REPO / "digits")
    with pytest.raises(ModelConfigError, match="max_side_px"):
        DigitsSettings.from_config(_config(max_side_px="100000"), REPO / "digits")


def test_image_side_bounds_come_from_the_config():
    shipped = _pipeline().settings
    assert (shipped.min_side_px, shipped.max_side_px) == (8, 1024)
    narrow = _pipeline(min_side_px="16", max_side_px="20")
    narrow.parse(_image(), None)  # 16x16: inside
    for side in (12, 24):
        with pytest.raises(InvalidInputError, match="between 16 and 20 pixels") as info:
            narrow.parse(np.zeros((1, side, side), dtype=np.uint8), None)
        assert info.value.field == "image"


def test_digits_batch_never_exceeds_classifier_batch():
    classifier = ModelConfig.from_pbtxt(REPO / "digits_classifier" / "config.pbtxt")
    assert _config().max_batch_size <= classifier.max_batch_size


class _DeadStub(FakeBackend):
    """Versions in ``dead`` are loaded (ready) but their backend process died."""

    def __init__(self, dead=(2,), **kwargs) -> None:
        super().__init__(**kwargs)
        self.dead = set(dead)

    def classify(self, version, pixels):
        if version in self.dead:
            self.calls.append((version, pixels.shape))
            raise ClassifierError(
                f"digits_classifier version {version} failed: Stub process "
                f"'digits_classifier_0_{version - 1}' is not healthy.",
                crashed=True,
            )
        return super().classify(version, pixels)


def test_a_crashed_classifier_version_is_unavailable_not_a_server_error(pipeline):
    """Shipped policy (version 2 only): routed and pinned requests are 503, naming the cause."""
    pinned = pipeline.parse(_image(), None, {"model_version": "2"})
    routed, pinned_result, other = pipeline.run(
        [
            pipeline.parse(_image(), None),
            pinned,
            pipeline.parse(_image(), None, {"model_version": "1"}),
        ],
        _DeadStub(dead=(2,)),
    )
    assert isinstance(routed, UnavailableError) and "not healthy" in str(routed)
    assert "no live version to fall back to" in str(routed)
    assert isinstance(pinned_result, UnavailableError)
    assert "backend process died" in str(pinned_result) and "not healthy" in str(pinned_result)
    assert other["labels"][0, 0] == b"7"  # version 1 still serves


def test_routed_requests_fall_back_from_a_crashed_version():
    pipeline = _pipeline(traffic_policy='{"weights": {"1": 10, "2": 90}}')
    backend = _DeadStub(dead=(2,))
    parsed = [pipeline.parse(_image(), None, {"routing_key": f"user-{i}"}) for i in range(30)]
    assert {p.route.version for p in parsed} == {1, 2}
    metas = [json.loads(r["metadata"][0, 0]) for r in pipeline.run(parsed, backend)]
    assert {m["classifier"]["version"] for m in metas} == {"1"}
    assert "fallback" in {m["routing"] for m in metas}
    everything_dead = pipeline.run(parsed[:3], _DeadStub(dead=(1, 2)))
    assert all(isinstance(r, UnavailableError) for r in everything_dead)


def test_a_bug_building_one_answer_fails_only_that_request(pipeline, monkeypatch):
    backend = FakeBackend()
    parsed = [pipeline.parse(_image(), top_k) for top_k in (None, np.array([[4]]), None)]
    respond = pipeline.respond

    def buggy(request, probabilities):
        if request.top_k == 4:
            raise KeyError("a bug")
        return respond(request, probabilities)

    monkeypatch.setattr(pipeline, "respond", buggy)
    first, failed, last = pipeline.run(parsed, backend)
    assert isinstance(failed, KeyError)
    assert first["labels"][0, 0] == b"7" and last["labels"][0, 0] == b"7"
    assert len(backend.calls) == 1  # one classifier call for the three requests
    assert [count for _, _, count in backend.routes] == [2]  # the two answered, in one update


class _BrokenReadiness(FakeBackend):
    """Readiness checks hit a bug (not a ClassifierError), so a routing fallback raises."""

    def live_versions(self, candidates):
        raise RuntimeError("a bug in the readiness check")


def test_route_metrics_of_a_batch_that_is_rerun_are_counted_once(pipeline):
    backend = _BrokenReadiness(live=(1,))
    pb = fake_triton.pb_utils()
    parsed = {
        "v1": pipeline.parse(_image(), None, {"model_version": 1}),
        "v3": pipeline.parse(_image(), None, {"model_version": 3}),  # not live: raises
    }
    requests = [fake_triton.Request(rid, item) for rid, item in parsed.items()]
    served, failed = respond(
        requests,
        lambda request: request.value,
        lambda items: pipeline.run(items, backend),
        pb,
        FailureLog(pb.Logger, "digits"),
    )
    assert served.error is None and "RuntimeError" in failed.error.message
    assert backend.calls == [(1, (1, 64)), (3, (1, 64)), (1, (1, 64)), (3, (1, 64))]
    assert backend.routes == [(1, "pinned", 1)]  # the failed batch run counted nothing


def test_route_and_shadow_metrics_are_recorded_after_the_whole_batch_is_served():
    pipeline = _pipeline(traffic_policy='{"weights": {"1": 100}, "shadow": 2}')
    backend = _BrokenReadiness(live=(1, 2))
    parsed = [pipeline.parse(_image(), None), pipeline.parse(_image(), None, {"model_version": 3})]
    with pytest.raises(RuntimeError):
        pipeline.run(parsed, backend)
    assert backend.routes == [] and backend.shadows == []


def test_a_shadow_answer_that_cannot_be_compared_counts_as_a_shadow_error():
    pipeline = _pipeline(traffic_policy='{"weights": {"1": 100}, "shadow": 2}')

    class ExtraRowShadow(FakeBackend):
        def classify(self, version, pixels):
            probs = super().classify(version, pixels)
            return np.concatenate([probs, probs[:1]]) if version == 2 else probs

    backend = ExtraRowShadow()
    (result,) = pipeline.run([pipeline.parse(np.concatenate([_image()] * 2), None)], backend)
    assert result["labels"][:, 0].tolist() == [b"7", b"7"]
    assert backend.shadows == [(1, 2, 0, 0, 2)]
    assert backend.routes == [(1, "default", 2)]


def test_a_failing_metric_update_fails_the_requests_it_counts():
    pipeline = _pipeline(traffic_policy='{"weights": {"1": 100}, "shadow": 2}')

    class BrokenShadowMetric(FakeBackend):
        def record_shadow(self, *counts):
            raise ValueError("metric family gone")

    backend = BrokenShadowMetric()
    parsed = [pipeline.parse(_image(), None), pipeline.parse(_image(), None)]
    results = pipeline.run(parsed, backend)
    assert all(isinstance(r, ValueError) for r in results)
    assert backend.routes == [(1, "default", 2)]


def test_a_failing_route_update_fails_every_request_it_counts(pipeline):
    class BrokenRouteMetric(FakeBackend):
        def record_routes(self, version, reason, count):
            raise ValueError("metric family gone")

    parsed = [pipeline.parse(_image(), None), pipeline.parse(_image(), None)]
    results = pipeline.run(parsed, BrokenRouteMetric())
    assert len(results) == 2 and all(isinstance(r, ValueError) for r in results)
