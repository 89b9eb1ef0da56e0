"""Live drift and prediction statistics of ``digits``, computed off the request path.

``digits`` hands each served batch (its parsed requests and their outputs) to ``ServedTraffic``
with ``submit``: one deque append, nothing else, on the request path. A daemon thread drains the
queue every ``interval_s``: it turns every served image into a drift ``Observation`` (the
predicted class, the top-1 score, the image's ink fraction, polarity and size bucket), adds it
to the sliding window of the classifier version it was routed to (a request that fell back to
another version stays in its routed version's window: the switch shows as drift), compares each
window that grew with that version's reference profile (``drift_profile.json``, written beside the version by the
build from held-out data with the same features), and hands the results to a sink (the Triton
metrics of ``prediction_metrics``), which queues them: ``publish``, called by ``execute``,
sends them to Triton from the stub's request thread. So the metrics show the last report once
the next request arrives (at most ``report_every_s`` plus the gap between requests late).

The thread never touches a response: a failure there is logged once per kind and the request
path goes on.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.classifier_inputs import PreparedImages
from mlapi_backend.drift import DriftMonitor, DriftReport, Observation, ReferenceProfile
from mlapi_backend.errors import InvalidInputError

PROFILE_FILE = "drift_profile.json"
PROFILE_FORMAT = 1
INK = "ink_fraction"
INVERTED = "inverted"
IMAGE_SIZE = "image_size"
# Bucket of an image's longer side (fixed, so the label set and the profile's categories are
# bounded): the held-out digits are all 8x8.
SIZE_BUCKETS = ((8, "8"), (16, "9-16"), (32, "17-32"), (64, "33-64"), (256, "65-256"))
LARGEST_BUCKET = "257+"
# Window and test settings (drift.DriftMonitor): 500 images per version, evaluated once 200 are
# in; alpha 0.001 split over the p-values of a window (Bonferroni), PSI above 0.25.
WINDOW = 500
MIN_COUNT = 200
ALPHA = 0.001
PSI_THRESHOLD = 0.25
# Batches queued for the thread at most; past that the oldest are dropped (and counted).
MAX_QUEUED_BATCHES = 10_000


def size_bucket(height: int, width: int) -> str:
    """Return the fixed bucket of an image's longer side."""
    side = max(height, width)
    for bound, name in SIZE_BUCKETS:
        if side <= bound:
            return name
    return LARGEST_BUCKET


def image_observations(
    images_shape: Sequence[int],
    prepared: PreparedImages,
    top1_labels: Sequence[str],
    top1_scores: Sequence[float] | NDArray[Any],
) -> list[Observation]:
    """One drift observation per image of a request, from what serving already computed.

    Ink fraction: the mean of the classifier input relative to full ink (16 on the 8x8 path,
    1 on the 28x28 path), i.e. how much of the frame the digit's ink fills.
    """
    count = len(prepared.metadata)
    bucket = size_bucket(int(images_shape[-2]), int(images_shape[-1]))
    pixels = np.asarray(prepared.pixels, dtype=np.float64).reshape(count, -1)
    observations = []
    for i, meta in enumerate(prepared.metadata):
        full = float(meta.get("scaled_to", [0.0, 1.0])[1]) or 1.0
        inputs: dict[str, float | str] = {
            INK: round(float(pixels[i].mean()) / full, 6),
            INVERTED: "yes" if meta.get("inverted") else "no",
            IMAGE_SIZE: bucket,
        }
        # Rounded as the profile is, so that ties near 1.0 compare equal.
        top1 = round(float(top1_scores[i]), 6)
        observations.append(Observation(str(top1_labels[i]), top1, inputs))
    return observations


def profile_document(profile: ReferenceProfile, source: Mapping[str, Any]) -> dict[str, Any]:
    """Return the JSON document of a version's reference profile (what the build writes)."""
    return {"format": PROFILE_FORMAT, "source": dict(source), "profile": profile.to_json()}


def read_profiles(classifier_dir: Path, versions: Sequence[int]) -> dict[int, ReferenceProfile]:
    """Read each version folder's reference profile; a version without one is not watched.

    ValueError names the file when a profile exists but cannot be read: serving on with a
    broken profile would hide drift.
    """
    profiles = {}
    for version in versions:
        path = classifier_dir / str(version) / PROFILE_FILE
        if not path.is_file():
            continue
        try:
            document = json.loads(path.read_text())
            if document.get("format") != PROFILE_FORMAT:
                raise ValueError(f"format {document.get('format')!r}, expected {PROFILE_FORMAT}")
            profiles[version] = ReferenceProfile.from_json(document["profile"])
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"cannot read the drift profile {path}: {exc}") from exc
    return profiles


@dataclass(frozen=True)
class ServedImages:
    """The images of one served request, as the statistics see them."""

    version: int  # the classifier version that served it
    routed: int  # the version it was routed to (pinned or by policy): its drift window
    observations: list[Observation]
    low_confidence: list[list[str]]  # reasons per image (empty: confident)
    cost_usd: float = 0.0  # the request's estimated cost (mlapi_backend.cost), all images
    cpu_s: float = 0.0  # the CPU seconds that cost stands for


class StatisticsSink(Protocol):
    """Where the thread's results go (prediction_metrics implements it with Triton metrics)."""

    def record_served(self, served: ServedImages) -> None: ...

    def record_rejected(self, field: str, count: int) -> None: ...

    def record_drift(self, version: int, report: DriftReport | None, window: int) -> None: ...

    def record_dropped(self, count: int) -> None: ...

    def flush(self) -> None: ...

    def apply(self) -> int: ...


def served_images(
    request: Any, outputs: Mapping[str, NDArray[Any]], input_kind: Callable[[int], str]
) -> ServedImages:
    """Read one served request (a digits_pipeline ParsedRequest and its outputs).

    Only the first image's metadata is parsed (version and cost are the request's), and that of
    each flagged image (its reasons): JSON parsing was most of the thread's time per image.
    """
    rows = outputs["metadata"]
    first = json.loads(rows[0][0])
    version = int(first["classifier"]["version"])
    prepared = request.inputs(input_kind(version))
    labels = [
        row[0].decode() if isinstance(row[0], bytes) else str(row[0]) for row in outputs["labels"]
    ]
    scores = np.asarray(outputs["scores"])[:, 0]
    observations = image_observations(request.images.shape, prepared, labels, scores)
    flagged = np.asarray(outputs["low_confidence"]).reshape(-1)
    reasons: list[list[str]] = []
    for i, flag in enumerate(flagged):
        meta = (first if i == 0 else json.loads(rows[i][0])) if flag else {}
        reasons.append(list(meta.get("low_confidence_reasons", [])))
    cost = first.get("cost") or {}
    usd = float(cost.get("usd", 0.0)) * len(rows)  # every image carries the same share
    cpu_s = float(cost.get("cpu_s", 0.0)) * len(rows)
    return ServedImages(version, int(request.route.version), observations, reasons, usd, cpu_s)


@dataclass
class ServedTraffic:
    """Queue of served batches, drained by a thread into per-version drift windows and a sink."""

    profiles: Mapping[int, ReferenceProfile]
    sink: StatisticsSink
    input_kind: Callable[[int], str]
    # Drains every 0.1 s: the thread holds the GIL while it works (about 30 us per image,
    # measured on a busy 2-CPU host), so small drains keep the stall a request can meet short.
    interval_s: float = 0.1
    log_error: Callable[[str], None] = lambda message: None
    # Called after every report (e.g. the cost meter re-measuring the server's CPU).
    on_drain: Callable[[], None] = lambda: None
    report_every_s: float = 1.0
    window: int = WINDOW
    min_count: int = MIN_COUNT
    _queue: deque[tuple[Sequence[Any], Sequence[Any]]] = field(
        default_factory=lambda: deque(maxlen=MAX_QUEUED_BATCHES)
    )
    _monitors: dict[int, DriftMonitor] = field(default_factory=dict)
    _submitted: int = 0
    _drained: int = 0
    _logged: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _grown: set[int] = field(default_factory=set)
    _reported_at: float = float("-inf")

    def __post_init__(self) -> None:
        for version, profile in self.profiles.items():
            self._monitors[version] = DriftMonitor(
                profile, self.window, self.min_count, ALPHA, PSI_THRESHOLD
            )

    def submit(self, parsed: Sequence[Any], results: Sequence[Any]) -> None:
        """Queue a served batch (constant time; called on the request path)."""
        self._queue.append((parsed, results))
        self._submitted += 1

    def publish(self) -> None:
        """Send the sink's queued updates: from ``execute``, the thread never sends them.

        Called on every execute: with nothing queued, one check of an empty deque.
        """
        self._guard("publish", self.sink.apply)

    def start(self) -> None:
        """Start the draining thread (a daemon: it never holds the stub up at exit)."""
        self._thread = threading.Thread(target=self._loop, name="digits-statistics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drain what is queued and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.drain(force=True)
        self.publish()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.drain()

    def drain(self, force: bool = False) -> int:
        """Process every queued batch; return the images seen.

        Every ``report_every_s`` (or when ``force``) the counts are sent and the windows that
        grew are evaluated: each metric update is a message to the server process, and an
        evaluation takes a few milliseconds.
        """
        grown: set[int] = set()
        images = 0
        batches = 0
        while self._queue:
            try:
                parsed, results = self._queue.popleft()
            except IndexError:
                break
            batches += 1
            for request, outcome in zip(parsed, results, strict=False):
                images += self._one(request, outcome, grown)
        self._drained += batches
        dropped = self._submitted - self._drained
        if dropped > 0:  # the deque overflowed: its oldest batches were never seen
            self._drained += dropped
            self._guard("dropped", self.sink.record_dropped, dropped)
        self._grown |= grown
        now = time.monotonic()
        if force or now - self._reported_at >= self.report_every_s:
            self._reported_at = now
            for version in sorted(self._grown):
                monitor = self._monitors[version]
                report = self._guard("evaluate", monitor.evaluate)
                self._guard("drift", self.sink.record_drift, version, report, len(monitor))
            self._grown = set()
            # Counts last: once they show an image, the drift gauges include it.
            self._guard("flush", self.sink.flush)
            self._guard("after drain", self.on_drain)
        return images

    def _one(self, request: Any, outcome: Any, grown: set[int]) -> int:
        if isinstance(outcome, InvalidInputError):
            self._guard("rejected", self.sink.record_rejected, outcome.field, 1)
            return 0
        if not isinstance(outcome, Mapping):
            return 0  # a failed request (503, model error) predicted nothing
        served = self._guard("read", served_images, request, outcome, self.input_kind)
        if served is None:
            return 0
        monitor = self._monitors.get(served.routed)
        if monitor is not None:
            for observation in served.observations:
                monitor.observe(observation)
            grown.add(served.routed)
        self._guard("served", self.sink.record_served, served)
        return len(served.observations)

    def _guard(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except Exception as exc:  # statistics must never break serving; say so once per kind
            if what not in self._logged:
                self._logged.add(what)
                self.log_error(f"digits statistics: {what} failed: {exc!r}")
            return None
