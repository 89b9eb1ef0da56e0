"""The digits drift watch on the real held-out digits and built versions, and its metrics sink.

The false-alarm rate is simulated over many windows of held-out traffic against the profile
the build wrote; the shifts are the ones the integration test drives through a real server.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from mlapi_backend.classifier_inputs import SCALED_8X8, prepare
from mlapi_backend.drift import DriftMonitor, Observation, requests_until_alarm
from mlapi_backend.drift_monitor import (
    ALPHA,
    MIN_COUNT,
    PSI_THRESHOLD,
    WINDOW,
    ServedImages,
    ServedTraffic,
    image_observations,
    read_profiles,
    served_images,
    size_bucket,
)
from mlapi_backend.errors import InvalidInputError, UnavailableError
from mlapi_backend.prediction_metrics import TritonPredictionMetrics
from mlapi_backend.traffic_policy import Route
from mlapi_tools.build.digits_data import DigitsSplit, load_split
from mlapi_tools.build.drift_profiles import held_out_observations, write_profiles
from tests.conftest import MODEL_REPOSITORY

CLASSIFIER = MODEL_REPOSITORY / "digits_classifier"
needs_models = pytest.mark.skipif(
    not (CLASSIFIER / "3" / "model.onnx").is_file(), reason="models not built (make models)"
)


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return load_split()


def monitor_for(version: int) -> DriftMonitor:
    profile = read_profiles(CLASSIFIER, [version])[version]
    return DriftMonitor(profile, WINDOW, MIN_COUNT, ALPHA, PSI_THRESHOLD)


def test_size_buckets_are_fixed() -> None:
    assert [size_bucket(s, s) for s in (8, 9, 28, 64, 65, 1024)] == [
        "8", "9-16", "17-32", "33-64", "65-256", "257+"
    ]  # fmt: skip
    assert size_bucket(8, 300) == "257+"


def test_observations_carry_ink_polarity_and_size() -> None:
    images = np.zeros((2, 8, 8), dtype=np.uint8)
    images[:, 2:6, 3:5] = 255
    images[1] = 255 - images[1]
    prepared = prepare(SCALED_8X8, images)
    found = image_observations(images.shape, prepared, ["1", "7"], [0.9, 0.4])
    assert [o.predicted for o in found] == ["1", "7"]
    assert found[0].inputs["inverted"] == "no" and found[1].inputs["inverted"] == "yes"
    assert found[0].inputs["image_size"] == "8"
    assert 0 < float(found[0].inputs["ink_fraction"]) <= 1


@needs_models
def test_profiles_are_deterministic(tmp_path: Path) -> None:
    copy = tmp_path / "digits_classifier"
    for version in (1, 2, 3):
        (copy / str(version)).mkdir(parents=True)
        for name in ("model.onnx", "metrics.json"):
            source = CLASSIFIER / str(version) / name
            if source.is_file():
                (copy / str(version) / name).write_bytes(source.read_bytes())
    (copy / "labels.txt").write_bytes((CLASSIFIER / "labels.txt").read_bytes())
    first = {v: p.read_bytes() for v, p in write_profiles(tmp_path).items()}
    second = {v: p.read_bytes() for v, p in write_profiles(tmp_path).items()}
    assert first == second and sorted(first) == [1, 2, 3]
    shipped = {v: (CLASSIFIER / str(v) / "drift_profile.json").read_bytes() for v in first}
    assert first == shipped, "the repository's profiles are stale: run `make models`"
    document = json.loads(first[2])
    assert sum(document["profile"]["categorical"]["predicted_class"].values()) == 450


@needs_models
@pytest.mark.parametrize("version", [1, 2, 3])
def test_held_out_traffic_alarms_in_under_one_percent_of_windows(
    version: int, split: DigitsSplit, report_figure: Any
) -> None:
    observations = held_out_observations(CLASSIFIER, version, split.test_images)
    rng = np.random.default_rng(version)
    windows = 1000
    alarms = 0
    for _ in range(windows):
        monitor = monitor_for(version)
        for i in rng.integers(0, len(observations), WINDOW):
            monitor.observe(observations[i])
        report = monitor.evaluate()
        assert report is not None
        alarms += report.drifted
    report_figure(f"drift false alarms, version {version}", f"{alarms} of {windows} windows")
    assert alarms / windows < 0.01


def _stream(observations: list[Observation], seed: int):
    rng = np.random.default_rng(seed)
    while True:
        for i in rng.permutation(len(observations)):
            yield observations[i]


@needs_models
def test_each_shift_raises_the_alarm_from_a_full_clean_window(
    split: DigitsSplit, report_figure: Any
) -> None:
    rng = np.random.default_rng(7)
    images = split.test_images
    noisy = np.clip(images + rng.normal(0, 40, images.shape), 0, 255).astype(np.uint8)
    shifted = {
        "class prior (digits 0-4)": held_out_observations(
            CLASSIFIER, 3, images[np.isin(split.test_y, [0, 1, 2, 3, 4])]
        ),
        "inverted": held_out_observations(CLASSIFIER, 3, 255 - images),
        "noisy": held_out_observations(CLASSIFIER, 3, noisy),
        "version 2 answering for 3": held_out_observations(CLASSIFIER, 2, images),
    }
    clean = held_out_observations(CLASSIFIER, 3, images)
    for name, observations in shifted.items():
        monitor = monitor_for(3)
        for i in rng.integers(0, len(clean), WINDOW):
            monitor.observe(clean[i])
        found = requests_until_alarm(monitor, _stream(observations, 1), every=10)
        report_figure(f"drift alarm (simulated, version 3), {name}", f"{found} images")
        assert found is not None and found <= 1000


class RecordingSink:
    def __init__(self) -> None:
        self.served: list[ServedImages] = []
        self.rejected: list[tuple[str, int]] = []
        self.drift: list[tuple[int, Any, int]] = []
        self.dropped = 0

    def record_served(self, served: ServedImages) -> None:
        self.served.append(served)

    def record_rejected(self, field: str, count: int) -> None:
        self.rejected.append((field, count))

    def record_drift(self, version: int, report: Any, window: int) -> None:
        self.drift.append((version, report, window))

    def record_dropped(self, count: int) -> None:
        self.dropped += count

    def flush(self) -> None:
        self.flushed = getattr(self, "flushed", 0) + 1

    def apply(self) -> int:
        self.applied = getattr(self, "applied", 0) + 1
        return 0


class FakeRequest:
    def __init__(self, images: np.ndarray, routed: int) -> None:
        self.images = images
        self.route = Route(routed, "policy")

    def inputs(self, kind: str) -> Any:
        return prepare(kind, self.images)


def outputs(count: int, version: int, label: str = "3", reasons: tuple[str, ...] = ()) -> dict:
    meta = {"classifier": {"version": str(version)}, "low_confidence_reasons": list(reasons)}
    return {
        "labels": np.array([[label.encode(), b"1"]] * count, dtype=np.object_),
        "scores": np.array([[0.97, 0.02]] * count, dtype=np.float32),
        "low_confidence": np.array([[bool(reasons)]] * count),
        "metadata": np.array([[json.dumps(meta).encode()]] * count, dtype=np.object_),
    }


@needs_models
def test_served_traffic_routes_windows_counts_and_survives_failures() -> None:
    sink = RecordingSink()
    errors: list[str] = []
    profiles = read_profiles(CLASSIFIER, [2, 3])
    traffic = ServedTraffic(profiles, sink, lambda v: SCALED_8X8, log_error=errors.append)
    images = np.full((4, 8, 8), 9, dtype=np.uint8)
    fell_back = FakeRequest(images, routed=3)
    traffic.submit(
        [FakeRequest(images, 2), fell_back, InvalidInputError("image", "x", "y"), object()],
        [outputs(4, 2), outputs(4, 2), InvalidInputError("image", "x", "y"), UnavailableError()],
    )
    assert traffic.drain() == 8
    assert [(s.version, s.routed) for s in sink.served] == [(2, 2), (2, 3)]
    assert sink.rejected == [("image", 1)]
    assert sorted((v, w) for v, _, w in sink.drift) == [(2, 4), (3, 4)]
    assert sink.flushed == 1
    traffic.submit([FakeRequest(images, 2)], [{"metadata": np.array([[b"not json"]])}])
    assert traffic.drain() == 0 and len(errors) == 1  # logged once, nothing raised


def test_served_images_reads_the_served_version_and_reasons() -> None:
    request = FakeRequest(np.zeros((2, 8, 8), dtype=np.uint8), routed=3)
    served = served_images(request, outputs(2, 1, "7", ("blank_image",)), lambda v: SCALED_8X8)
    assert (served.version, served.routed) == (1, 3)
    assert [o.predicted for o in served.observations] == ["7", "7"]
    assert served.low_confidence == [["blank_image"], ["blank_image"]]


def test_a_full_queue_drops_the_oldest_and_says_so() -> None:
    sink = RecordingSink()
    traffic = ServedTraffic({}, sink, lambda v: SCALED_8X8)
    traffic._queue = type(traffic._queue)(maxlen=2)
    for _ in range(5):
        traffic.submit([], [])
    traffic.drain()
    assert sink.dropped == 3


def test_the_thread_drains_in_the_background_and_stops() -> None:
    sink = RecordingSink()
    traffic = ServedTraffic({}, sink, lambda v: SCALED_8X8, interval_s=0.01)
    traffic.start()
    traffic.submit([InvalidInputError("top_k", "x", "y")], [InvalidInputError("top_k", "x", "y")])
    traffic.stop()
    assert sink.rejected == [("top_k", 1)]


class FakeMetric:
    # The threads that created or updated a metric (each such call is a message to Triton).
    threads: ClassVar[set[int]] = set()

    def __init__(self, labels: dict[str, str], buckets: list[float] | None) -> None:
        self.labels, self.buckets, self.value, self.observed = labels, buckets, 0.0, []
        FakeMetric.threads.add(threading.get_ident())

    def increment(self, value: float) -> None:
        FakeMetric.threads.add(threading.get_ident())
        self.value += value

    def set(self, value: float) -> None:
        FakeMetric.threads.add(threading.get_ident())
        self.value = value

    def observe(self, value: float) -> None:
        self.observed.append(value)


class FakeFamily:
    COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
    created: ClassVar[dict[str, FakeFamily]] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind, self.metrics = name, kind, []
        FakeFamily.created[name] = self

    def Metric(self, labels: dict[str, str], buckets: list[float] | None = None) -> FakeMetric:  # noqa: N802
        assert (buckets is not None) == (self.kind == "histogram")
        metric = FakeMetric(labels, buckets)
        self.metrics.append(metric)
        return metric


@needs_models
def test_triton_metrics_export_counts_histogram_and_drift_gauges() -> None:
    FakeFamily.created = {}
    metrics = TritonPredictionMetrics(SimpleNamespace(MetricFamily=FakeFamily), "digits", "i0")
    observations = [Observation("3", 0.9), Observation("3", 0.3), Observation("8", 0.99)]
    reasons = [[], ["top_score_below_threshold"], []]
    metrics.record_served(ServedImages(2, 2, observations, reasons))
    f = FakeFamily.created
    assert not f["mlapi_predictions_total"].metrics  # nothing sent before the flush
    metrics.record_served(ServedImages(2, 2, observations[:1], [[]]))
    metrics.flush()
    assert not f["mlapi_predictions_total"].metrics  # queued: sent by apply() alone
    assert metrics.apply() == 2 + 13 + 5  # labels, top-1 buckets; flagged, blank, reason, cost, CPU
    assert metrics.apply() == 0
    assert {m.labels["label"]: m.value for m in f["mlapi_predictions_total"].metrics} == {
        "3": 3, "8": 1
    }  # fmt: skip
    assert len(f["mlapi_predictions_total"].metrics) == 2  # one series each, sent once
    buckets = {m.labels["le"]: m.value for m in f["mlapi_top1_score_images_total"].metrics}
    # Cumulative: 0.3 <= 0.3; 0.9, 0.9 <= 0.9; 0.99 <= 0.99; all four <= +Inf.
    assert (buckets["0.2"], buckets["0.3"], buckets["0.8"], buckets["0.9"]) == (0, 1, 1, 3)
    assert (buckets["0.95"], buckets["0.99"], buckets["+Inf"]) == (3, 4, 4)
    assert buckets["0.1"] == 0 and len(buckets) == 13  # every bucket, so quantiles read right
    assert f["mlapi_low_confidence_images_total"].metrics[0].value == 1
    assert f["mlapi_blank_images_total"].metrics[0].value == 0
    monitor = monitor_for(2)
    for _ in range(MIN_COUNT):
        monitor.observe(Observation("3", 0.5, {"inverted": "yes"}))
    metrics.record_drift(2, monitor.evaluate(), len(monitor))
    metrics.apply()
    assert f["mlapi_drift_flag"].metrics[0].value == 1
    assert f["mlapi_drift_flag"].metrics[0].labels == {
        "model": "digits", "version": "2", "instance": "i0"
    }  # fmt: skip
    assert {m.labels["test"] for m in f["mlapi_drift_p_value"].metrics} == {"chi2", "ks"}
    metrics.record_drift(3, None, 10)
    metrics.apply()
    assert f["mlapi_drift_window_images"].metrics[-1].value == 10


@needs_models
def test_the_statistics_thread_never_sends_a_metric_itself() -> None:
    """Its updates wait in the sink until publish(), which execute calls on its own thread."""
    FakeFamily.created, FakeMetric.threads = {}, set()
    metrics = TritonPredictionMetrics(SimpleNamespace(MetricFamily=FakeFamily), "digits", "i0")
    profiles = read_profiles(CLASSIFIER, [2])
    traffic = ServedTraffic(profiles, metrics, lambda v: SCALED_8X8, interval_s=0.01)
    traffic.report_every_s = 0.0  # report at every drain
    images = np.full((4, 8, 8), 9, dtype=np.uint8)
    traffic.start()
    try:
        for _ in range(5):
            traffic.submit([FakeRequest(images, 2)], [outputs(4, 2)])
        traffic.submit(
            [InvalidInputError("image", "x", "y")], [InvalidInputError("image", "x", "y")]
        )
        deadline = time.monotonic() + 30
        while traffic._drained < 6 or not metrics._outbox:  # the thread has drained them all
            assert time.monotonic() < deadline, "the statistics thread never drained"
            time.sleep(0.01)
        assert FakeMetric.threads == set()  # queued, not one message sent from the thread
        traffic.publish()
    finally:
        traffic.stop()
    assert FakeMetric.threads == {threading.get_ident()}
    predicted = FakeFamily.created["mlapi_predictions_total"].metrics
    assert sum(m.value for m in predicted) == 20
    assert FakeFamily.created["mlapi_rejected_inputs_total"].metrics[0].value == 1
    assert FakeFamily.created["mlapi_drift_window_images"].metrics[-1].value == 20
