"""``digits``'s prediction distributions and drift results as Triton custom metrics.

The ``drift_monitor`` thread calls this sink, which only queues the updates: ``apply`` sends
them to Triton from ``execute`` (the stub's own thread), never from the statistics thread (an
update from another thread preceded an abort of tritonserver in a boost lock). ``pb_utils`` is
passed in, so this library module never imports it. Every label value is bounded: model and version come from the repository,
``label`` from the classifier's labels file, ``reason`` from the fixed low-confidence reasons,
``field`` from the model's inputs and parameters, ``feature`` and ``test`` from the profile, and
``instance`` from the model's instance group.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlapi_backend.classifier_repository import version_folders
from mlapi_backend.cost import CostMeter, price_results, started_meter
from mlapi_backend.drift import DriftReport
from mlapi_backend.drift_monitor import ServedImages, ServedTraffic, read_profiles
from mlapi_backend.errors import ModelConfigError

# Top-1 score buckets: fine near 1, where confident digits sit, and at the default 0.5 cut.
# Counted as a cumulative counter per bucket (label ``le``, "+Inf" last), which
# histogram_quantile reads like a histogram's buckets: a HISTOGRAM family needs one observe()
# per image, and each is a message to the server process (measured: server CPU per
# single-image request +25-35 % with per-image observes, interleaved runs on 2 shared CPUs).
TOP1_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
TOP1_LE = (*(str(b) for b in TOP1_BUCKETS), "+Inf")
BLANK_REASON = "blank_image"


class TritonPredictionMetrics:
    """Counters, a histogram and gauges on Triton's metrics port, per model version."""

    def __init__(self, pb_utils: Any, model: str, instance: str) -> None:
        family = pb_utils.MetricFamily
        self.model = model
        self.instance = instance
        self._families = {
            "predictions": family(
                name="mlapi_predictions_total",
                description="Served images by classifier version and predicted (top-1) label",
                kind=family.COUNTER,
            ),
            "top1": family(
                name="mlapi_top1_score_images_total",
                description="Served images whose top-1 score is <= le (cumulative buckets)",
                kind=family.COUNTER,
            ),
            "low_confidence": family(
                name="mlapi_low_confidence_total",
                description="Served images flagged low-confidence, by version and reason",
                kind=family.COUNTER,
            ),
            "flagged": family(
                name="mlapi_low_confidence_images_total",
                description="Served images with the low_confidence flag set (any reason)",
                kind=family.COUNTER,
            ),
            "blank": family(
                name="mlapi_blank_images_total",
                description="Served images that held no ink (blank), by classifier version",
                kind=family.COUNTER,
            ),
            "rejected": family(
                name="mlapi_rejected_inputs_total",
                description="Requests refused as invalid (400), by the input or parameter named",
                kind=family.COUNTER,
            ),
            "dropped": family(
                name="mlapi_statistics_dropped_batches_total",
                description="Served batches the statistics thread fell too far behind to see",
                kind=family.COUNTER,
            ),
            "cost": family(
                name="mlapi_cost_usd_total",
                description="Estimated cost of served requests in USD (docs: cost model)",
                kind=family.COUNTER,
            ),
            "cpu": family(
                name="mlapi_cost_cpu_seconds_total",
                description="CPU seconds the estimated cost of served requests stands for",
                kind=family.COUNTER,
            ),
            "statistic": family(
                name="mlapi_drift_statistic",
                description="Drift test statistic of the live window vs the version's profile",
                kind=family.GAUGE,
            ),
            "p_value": family(
                name="mlapi_drift_p_value",
                description="Drift test p-value of the live window vs the version's profile",
                kind=family.GAUGE,
            ),
            "flag": family(
                name="mlapi_drift_flag",
                description="1 while the version's live window drifts from its profile",
                kind=family.GAUGE,
            ),
            "window": family(
                name="mlapi_drift_window_images",
                description="Images in the version's live drift window",
                kind=family.GAUGE,
            ),
        }
        self._metrics: dict[tuple[Any, ...], Any] = {}
        self._pending: dict[tuple[str, str, str, str], float] = {}
        self._top1: dict[str, list[int]] = {}  # per version: images per top-1 bucket
        # Updates queued by the statistics thread for ``apply``: (family, labels, method,
        # value). deque's append and popleft are atomic, so the two threads need no lock.
        self._outbox: deque[tuple[str, dict[str, str], str, float]] = deque()

    def _metric(self, family: str, **labels: str) -> Any:
        key = (family, *sorted(labels.items()))
        if key not in self._metrics:
            full = {"model": self.model, **labels}
            self._metrics[key] = self._families[family].Metric(labels=full)
        return self._metrics[key]

    def record_served(self, served: ServedImages) -> None:
        """Count one served request's predictions, scores and flags (sent at ``flush``)."""
        version = str(served.version)
        # Per bucket, not cumulative: flush adds them up (13 additions a request fewer).
        counts = self._top1.get(version)
        if counts is None:
            counts = self._top1[version] = [0] * len(TOP1_LE)
        for observation in served.observations:
            self._add(("predictions", version, "label", observation.predicted), 1)
            counts[bisect_left(TOP1_BUCKETS, observation.top1)] += 1  # first bucket it is <= of
        flagged = sum(bool(reasons) for reasons in served.low_confidence)
        # Zero increments too, so that the series exist and rates read 0 rather than nothing.
        self._add(("flagged", version, "", ""), flagged)
        blank = sum(BLANK_REASON in reasons for reasons in served.low_confidence)
        self._add(("blank", version, "", ""), blank)
        for reasons in served.low_confidence:
            for reason in reasons:
                self._add(("low_confidence", version, "reason", reason), 1)
        self._add(("cost", version, "", ""), served.cost_usd)
        self._add(("cpu", version, "", ""), served.cpu_s)

    def _add(self, key: tuple[str, str, str, str], count: float) -> None:
        self._pending[key] = self._pending.get(key, 0) + count

    def _send(self, family: str, labels: dict[str, str], method: str, value: float) -> None:
        self._outbox.append((family, labels, method, value))

    def apply(self) -> int:
        """Send the queued updates to Triton; return how many (call from ``execute``).

        Creating a metric and updating it are messages to the server process: here they
        leave from the stub's request thread, one batch of them per statistics report.
        """
        sent = 0
        while self._outbox:
            family, labels, method, value = self._outbox.popleft()
            getattr(self._metric(family, **labels), method)(value)
            sent += 1
        return sent

    def flush(self) -> None:
        """Queue the counts gathered since the last flush: one update per series per report.

        A Python-backend metric update is a message to the server process; per report rather
        than per request keeps the cost per image low.
        """
        for version, counts in self._top1.items():
            total = 0
            for le, images in zip(TOP1_LE, counts, strict=True):  # every bucket, zeros too
                total += images
                self._add(("top1", version, "le", le), total)
        self._top1 = {}
        pending, self._pending = self._pending, {}
        for (family, version, name, value), count in pending.items():
            if not count >= 0:  # never send a counter a negative or NaN step
                continue
            labels = {"version": version, **({name: value} if name else {})}
            self._send(family, labels, "increment", count)

    def record_rejected(self, field: str, count: int) -> None:
        """Count requests refused for ``field``."""
        self._send("rejected", {"field": field}, "increment", count)

    def record_dropped(self, count: int) -> None:
        """Count batches the statistics never saw."""
        self._send("dropped", {}, "increment", count)

    def record_drift(self, version: int, report: DriftReport | None, window: int) -> None:
        """Export one evaluation of ``version``'s window (None: too few images yet)."""
        labels = {"version": str(version), "instance": self.instance}
        self._send("window", labels, "set", window)
        if report is None:
            self._send("flag", labels, "set", 0)
            return
        for test in report.tests:
            where = {**labels, "feature": test.feature, "test": test.test}
            self._send("statistic", where, "set", test.statistic)
            if test.p_value is not None:
                self._send("p_value", where, "set", test.p_value)
        self._send("flag", labels, "set", 1 if report.drifted else 0)


def start_statistics(
    pb_utils: Any, settings: Any, args: dict[str, str], meter: CostMeter | None = None
) -> ServedTraffic:
    """Start ``digits``'s statistics thread: profiles read, Triton metrics as its sink.

    ``settings`` is the model's DigitsSettings; ``args`` the stub's initialize arguments (the
    instance name labels the drift gauges: each instance watches the traffic it serves).
    """
    versions = sorted(version_folders(settings.classifier_dir))
    try:
        profiles = read_profiles(settings.classifier_dir, versions)
    except ValueError as exc:
        raise ModelConfigError(f"model '{settings.model_name}': {exc}") from exc
    instance = str(args.get("model_instance_name") or settings.model_name)
    traffic = ServedTraffic(
        profiles,
        TritonPredictionMetrics(pb_utils, settings.model_name, instance),
        lambda version: settings.profile(version).input_kind,
        log_error=pb_utils.Logger.log_error,
        on_drain=meter.update if meter is not None else lambda: None,
    )
    traffic.start()
    watched = sorted(profiles) or "none (no drift_profile.json)"
    pb_utils.Logger.log_info(f"{settings.model_name}: drift watched for versions {watched}")
    return traffic


# The model parameter that turns the statistics and the cost estimate of ``digits`` off
# ("off"; default "on"): the gateway's own metrics stay on. Off, answers carry no cost and
# Triton exports none of the prediction, drift or cost metrics above.
OBSERVABILITY_PARAMETER = "observability"


@dataclass
class Observability:
    """What ``digits``' execute calls for its statistics and costs (no-ops when off)."""

    meter: CostMeter | None = None
    statistics: ServedTraffic | None = None

    def publish(self) -> None:
        """Send the statistics thread's queued metric updates (first thing in ``execute``)."""
        if self.statistics is not None:
            self.statistics.publish()

    def record(
        self, parsed: Sequence[Any], results: list[Any], compute_s: float, gpu_s: float = 0.0
    ) -> None:
        """Price the batch's answers (in place) and queue the batch for the statistics."""
        if self.meter is not None:
            price_results(self.meter, parsed, results, compute_s, gpu_s)
        if self.statistics is not None:
            self.statistics.submit(parsed, results)

    def stop(self) -> None:
        """Drain and stop the statistics thread."""
        if self.statistics is not None:
            self.statistics.stop()


def start_observability(
    pb_utils: Any, settings: Any, args: dict[str, str], parameters: Mapping[str, str],
    env: Mapping[str, str],
) -> Observability:  # fmt: skip
    """Start the cost meter and statistics of ``digits``, unless its parameters turn them off.

    ``parameters``: the model config's; ``env``: where the prices come from.
    """
    value = (parameters.get(OBSERVABILITY_PARAMETER) or "on").strip().lower()
    if value not in ("on", "off"):
        raise ModelConfigError(
            f"model '{settings.model_name}': parameter '{OBSERVABILITY_PARAMETER}' must be "
            f"'on' or 'off', got {value!r}"
        )
    if value == "off":
        pb_utils.Logger.log_info(f"{settings.model_name}: statistics and cost estimates off")
        return Observability()
    meter = started_meter(env, str(args.get("model_instance_name") or settings.model_name))
    return Observability(meter, start_statistics(pb_utils, settings, args, meter))
