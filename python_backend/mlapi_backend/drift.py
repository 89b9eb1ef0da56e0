"""Prediction drift: a sliding window of live traffic against a version's reference profile.

A reference profile (built from held-out data when a model version is built) holds the class
priors, a sample of top-1 scores and samples or category shares of input statistics (e.g. ink
fraction, inverted polarity, image size bucket). ``DriftMonitor.observe`` appends one served
request to a bounded window (constant time: it runs on the request path);
``DriftMonitor.evaluate`` compares the window with the profile (it runs off the request path,
e.g. every few seconds from a thread) and returns every statistic, its p-value and one flag:

- categorical (predicted class, each categorical input statistic): Pearson's chi-square
  goodness of fit and the population stability index (PSI);
- numeric (top-1 score, each numeric input statistic): the two-sample Kolmogorov-Smirnov test,
  its p-value from the limiting Kolmogorov distribution at n = mn/(m+n) (Smirnov).

The window drifts when any p-value is below ``alpha`` divided by the number of tests (Bonferroni:
``alpha`` bounds the false-alarm rate of one evaluation) or a PSI exceeds ``psi_threshold``.
Only numpy is needed (Triton's Python stubs have no scipy). On the same samples the chi-square
statistic and p-value equal ``scipy.stats.chisquare``'s, the KS statistic equals
``scipy.stats.ks_2samp``'s, and its p-value ``scipy.stats.kstwobign.sf(sqrt(n) * D)``.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Added to every reference category count (and an "other" category for values the reference
# never saw), so that a category absent from the reference gives a large but finite statistic.
SMOOTHING = 0.5
OTHER = "<other>"
TOP1 = "top1_score"
PREDICTED = "predicted_class"


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for a chi-square variable with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError("dof must be >= 1")
    if statistic <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, statistic / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """Return the regularised upper incomplete gamma Q(a, x) (series or continued fraction)."""
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:  # the series for P converges fast here
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1.0
            term *= x / n
            total += term
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's continued fraction for Q.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chisquare(observed: Sequence[float], expected_share: Sequence[float]) -> tuple[float, float]:
    """Pearson's goodness-of-fit statistic of ``observed`` counts and its p-value."""
    counts = np.asarray(observed, dtype=np.float64)
    share = np.asarray(expected_share, dtype=np.float64)
    expected = share / share.sum() * counts.sum()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return statistic, chi2_sf(statistic, len(counts) - 1)


def psi(observed: Sequence[float], expected_share: Sequence[float]) -> float:
    """Return the population stability index of ``observed`` counts against expected shares.

    Observed shares are smoothed like the reference's, so an empty category stays finite.
    """
    counts = np.asarray(observed, dtype=np.float64) + SMOOTHING
    actual = counts / counts.sum()
    share = np.asarray(expected_share, dtype=np.float64)
    expected = share / share.sum()
    return float(((actual - expected) * np.log(actual / expected)).sum())


def kolmogorov_sf(z: float) -> float:
    """P(K >= z) for the limiting Kolmogorov distribution (scipy's kstwobign.sf)."""
    if z <= 0:
        return 1.0
    if z < 0.2:
        return 1.0  # 1 - sqrt(2 pi)/z * sum(exp(-(2k-1)^2 pi^2 / (8 z^2))) underflows to 1
    if z < 1.18:
        t = math.exp(-(math.pi**2) / (8 * z * z))
        cdf = math.sqrt(2 * math.pi) / z * (t + t**9 + t**25 + t**49)
        return 1.0 - cdf
    q = math.exp(-2 * z * z)
    return 2 * (q - q**4 + q**9 - q**16)


def ks_2samp(sample: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """Return the two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value."""
    a = np.sort(np.asarray(sample, dtype=np.float64))
    b = np.sort(np.asarray(reference, dtype=np.float64))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    statistic = float(np.max(np.abs(cdf_a - cdf_b)))
    n_eff = len(a) * len(b) / (len(a) + len(b))
    return statistic, min(1.0, max(0.0, kolmogorov_sf(math.sqrt(n_eff) * statistic)))


@dataclass(frozen=True)
class ReferenceProfile:
    """What a model version's traffic looked like on held-out data."""

    # Category -> count, per categorical feature (PREDICTED is the predicted class).
    categorical: Mapping[str, Mapping[str, float]]
    # A sample of values per numeric feature (TOP1 is the top-1 score).
    numeric: Mapping[str, Sequence[float]]

    @classmethod
    def build(cls, observations: Iterable[Observation], max_sample: int = 2000) -> ReferenceProfile:
        """Profile ``observations`` (numeric samples thinned evenly to ``max_sample``)."""
        categorical: dict[str, Counter[str]] = {}
        numeric: dict[str, list[float]] = {}
        for obs in observations:
            for name, value in obs.categories().items():
                categorical.setdefault(name, Counter())[value] += 1
            for name, number in obs.numbers().items():
                numeric.setdefault(name, []).append(number)
        thinned = {}
        for name, values in numeric.items():
            ordered = np.sort(np.asarray(values, dtype=np.float64))
            if len(ordered) > max_sample:  # evenly spaced order statistics keep the shape
                ordered = ordered[np.linspace(0, len(ordered) - 1, max_sample).round().astype(int)]
            thinned[name] = [float(v) for v in ordered]
        return cls({k: dict(v) for k, v in categorical.items()}, thinned)

    def to_json(self) -> dict[str, Any]:
        return {"categorical": {k: dict(v) for k, v in self.categorical.items()},
                "numeric": {k: list(v) for k, v in self.numeric.items()}}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Read ``to_json``'s form; ValueError when ``data`` is not a profile."""
        try:
            categorical = {
                str(k): {str(c): float(n) for c, n in v.items()}
                for k, v in data["categorical"].items()
            }
            numeric = {str(k): [float(x) for x in v] for k, v in data["numeric"].items()}
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise ValueError(f"not a drift reference profile: {exc}") from exc
        if not categorical and not numeric:
            raise ValueError("not a drift reference profile: no feature")
        return cls(categorical, numeric)


@dataclass(frozen=True)
class Observation:
    """One served request: its predicted class, top-1 score and input statistics."""

    predicted: str
    top1: float
    inputs: Mapping[str, float | str] = field(default_factory=dict)

    def categories(self) -> dict[str, str]:
        found = {PREDICTED: self.predicted}
        found.update({k: v for k, v in self.inputs.items() if isinstance(v, str)})
        return found

    def numbers(self) -> dict[str, float]:
        found = {TOP1: float(self.top1)}
        found.update({k: float(v) for k, v in self.inputs.items() if not isinstance(v, str)})
        return found


@dataclass(frozen=True)
class TestResult:
    """One comparison of the window with the reference."""

    feature: str
    test: str  # "chi2", "psi" or "ks"
    statistic: float
    p_value: float | None  # None for PSI (a threshold, not a test)


@dataclass(frozen=True)
class DriftReport:
    """Every comparison of one window, and whether it drifted."""

    window: int
    tests: tuple[TestResult, ...]
    drifted: bool
    reasons: tuple[str, ...]


class DriftMonitor:
    """The last ``window`` observations of one model version against its reference profile."""

    def __init__(
        self,
        reference: ReferenceProfile,
        window: int = 500,
        min_count: int = 200,
        alpha: float = 0.001,
        psi_threshold: float = 0.25,
    ) -> None:
        if not 0 < min_count <= window:
            raise ValueError("need 0 < min_count <= window")
        self.reference = reference
        self.min_count = min_count
        self.alpha = alpha
        self.psi_threshold = psi_threshold
        self._window: deque[Observation] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, observation: Observation) -> None:
        """Add one served request (constant time, thread-safe)."""
        with self._lock:
            self._window.append(observation)

    def __len__(self) -> int:
        return len(self._window)

    def clear(self) -> None:
        with self._lock:
            self._window.clear()

    def evaluate(self) -> DriftReport | None:
        """Compare the window with the reference; None while it holds under ``min_count``."""
        with self._lock:
            window = list(self._window)
        if len(window) < self.min_count:
            return None
        tests: list[TestResult] = []
        for name, counts in self.reference.categorical.items():
            tests.extend(self._categorical(name, counts, window))
        for name, sample in self.reference.numeric.items():
            values = [v for obs in window if (v := obs.numbers().get(name)) is not None]
            if len(values) >= self.min_count and sample:
                statistic, p_value = ks_2samp(values, sample)
                tests.append(TestResult(name, "ks", statistic, p_value))
        per_test_alpha = self.alpha / max(1, sum(t.p_value is not None for t in tests))
        reasons = tuple(
            f"{t.feature} ({t.test} {t.statistic:.3g}"
            + (f", p={t.p_value:.2g})" if t.p_value is not None else ")")
            for t in tests
            if (t.p_value is not None and t.p_value < per_test_alpha)
            or (t.p_value is None and t.statistic > self.psi_threshold)
        )
        return DriftReport(len(window), tuple(tests), bool(reasons), reasons)

    def _categorical(
        self, name: str, counts: Mapping[str, float], window: list[Observation]
    ) -> list[TestResult]:
        seen = Counter(obs.categories().get(name) for obs in window)
        seen.pop(None, None)
        if sum(seen.values()) < self.min_count:
            return []
        observed = [float(seen.get(c, 0)) for c in counts]
        observed.append(float(sum(n for c, n in seen.items() if c not in counts)))
        expected = [counts[c] + SMOOTHING for c in counts] + [SMOOTHING]
        statistic, p_value = chisquare(observed, expected)
        return [
            TestResult(name, "chi2", statistic, p_value),
            TestResult(name, "psi", psi(observed, expected), None),
        ]


def requests_until_alarm(
    monitor: DriftMonitor, observations: Iterable[Observation], every: int = 25
) -> int | None:
    """How many ``observations`` a monitor needs before it flags drift (evaluated every ``every``)."""
    for count, observation in enumerate(observations, start=1):
        monitor.observe(observation)
        if count % every == 0:
            report = monitor.evaluate()
            if report is not None and report.drifted:
                return count
    return None
