"""Drift statistics against scipy's, and the monitor on known traffic (seeded simulations)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import pytest
from scipy import stats

from mlapi_backend.drift import (
    PREDICTED,
    TOP1,
    DriftMonitor,
    Observation,
    ReferenceProfile,
    chi2_sf,
    chisquare,
    kolmogorov_sf,
    ks_2samp,
    psi,
    requests_until_alarm,
)

# --- statistics --------------------------------------------------------------------------------


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 9, 10, 30, 99])
def test_chi2_survival_matches_scipy(dof: int) -> None:
    for x in [1e-6, 0.01, 0.5, 1, 2, 5, 9.5, 10, 20, 50, 100, 300]:
        assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9, abs=1e-300)


def test_chisquare_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    for k in (2, 5, 11):
        share = rng.dirichlet(np.ones(k))
        observed = rng.multinomial(400, rng.dirichlet(np.ones(k)))
        ours = chisquare(observed, share)
        expected = share * observed.sum()
        theirs = stats.chisquare(observed, expected)
        assert ours[0] == pytest.approx(theirs.statistic, rel=1e-12)
        assert ours[1] == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-300)


def test_kolmogorov_survival_matches_scipy() -> None:
    for z in np.linspace(0.05, 4.0, 80):
        assert kolmogorov_sf(float(z)) == pytest.approx(stats.kstwobign.sf(z), abs=1e-12)


def test_ks_statistic_matches_scipy_and_p_is_smirnovs_limit() -> None:
    rng = np.random.default_rng(5)
    reference = rng.beta(8, 1, 2000)
    for sample in (rng.beta(8, 1, 500), rng.beta(5, 1, 300), np.round(rng.beta(8, 1, 400), 2)):
        statistic, p_value = ks_2samp(sample, reference)
        theirs = stats.ks_2samp(sample, reference, method="asymp")
        assert statistic == pytest.approx(theirs.statistic, abs=1e-12)
        n = len(sample) * len(reference) / (len(sample) + len(reference))
        assert p_value == pytest.approx(stats.kstwobign.sf(math.sqrt(n) * statistic), abs=1e-12)


def test_psi_is_zero_on_the_reference_and_grows_with_the_shift() -> None:
    share = [0.5, 0.3, 0.2]
    assert psi([499.5, 299.5, 199.5], share) == pytest.approx(0.0, abs=1e-12)
    small, large = psi([450, 330, 220], share), psi([200, 300, 500], share)
    assert 0 < small < 0.02 < 0.25 < large


def test_a_profile_survives_json_and_refuses_what_is_not_one() -> None:
    profile = ReferenceProfile.build(traffic(np.random.default_rng(1), 3000), max_sample=500)
    again = ReferenceProfile.from_json(profile.to_json())
    assert again == profile
    assert (
        len(profile.numeric[TOP1]) == 500 and sum(profile.categorical[PREDICTED].values()) == 3000
    )
    for bad in ({}, {"categorical": [], "numeric": {}}, {"categorical": {}, "numeric": {}}):
        with pytest.raises(ValueError, match="not a drift reference profile"):
            ReferenceProfile.from_json(bad)


# --- the monitor on known traffic --------------------------------------------------------------

PRIORS = np.full(10, 0.1)


def traffic(
    rng: np.random.Generator,
    count: int | None = None,
    priors: np.ndarray = PRIORS,
    score_beta: tuple[float, float] = (12.0, 1.0),
    ink: tuple[float, float] = (0.18, 0.04),
    inverted_share: float = 0.1,
) -> Iterator[Observation]:
    """Served requests as a digits version would see them (``count`` None: endlessly)."""
    for _ in itertools.count() if count is None else range(count):
        yield Observation(
            predicted=str(rng.choice(10, p=priors)),
            top1=float(rng.beta(*score_beta)),
            inputs={
                "ink_fraction": float(np.clip(rng.normal(*ink), 0, 1)),
                "inverted": "true" if rng.random() < inverted_share else "false",
            },
        )


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    return ReferenceProfile.build(traffic(np.random.default_rng(20261202), 5000))


def test_unshifted_traffic_raises_no_alarm_in_99_percent_of_windows(
    reference: ReferenceProfile, report_figure
) -> None:
    rng = np.random.default_rng(7)
    windows = 300
    alarms = 0
    for _ in range(windows):
        monitor = DriftMonitor(reference, window=500)
        for observation in traffic(rng, 500):
            monitor.observe(observation)
        report = monitor.evaluate()
        assert report is not None and report.window == 500
        alarms += report.drifted
    report_figure("drift: false alarms on unshifted windows of 500", f"{alarms}/{windows}")
    assert alarms <= windows // 100


SHIFTS = {
    "class prior shift (digit 7 three times as common)": {
        "priors": np.array([0.1] * 7 + [0.3] + [0.1] * 2) / 1.2
    },
    "inverted images (10% -> 60% light-on-dark)": {"inverted_share": 0.6},
    "noisy images (more ink, lower scores)": {"ink": (0.26, 0.06), "score_beta": (6.0, 1.0)},
    "another version served (flatter scores)": {"score_beta": (4.0, 1.0)},
}


@pytest.mark.parametrize("shift", SHIFTS)
def test_each_shift_raises_the_alarm(
    reference: ReferenceProfile, shift: str, report_figure
) -> None:
    monitor = DriftMonitor(reference, window=500)
    needed = requests_until_alarm(
        monitor, traffic(np.random.default_rng(11), 5000, **SHIFTS[shift])
    )
    report_figure(f"drift: requests until the alarm, {shift}", needed)
    assert needed is not None and needed <= 1000
    report = monitor.evaluate()
    assert report is not None and report.drifted and report.reasons


def test_no_verdict_before_the_window_holds_min_count(reference: ReferenceProfile) -> None:
    monitor = DriftMonitor(reference, window=500, min_count=200)
    for observation in traffic(np.random.default_rng(2), 199, inverted_share=1.0):
        monitor.observe(observation)
    assert monitor.evaluate() is None
    monitor.observe(next(traffic(np.random.default_rng(3), 1, inverted_share=1.0)))
    report = monitor.evaluate()
    assert report is not None and report.drifted
    assert any(reason.startswith("inverted (chi2") for reason in report.reasons)
    monitor.clear()
    assert monitor.evaluate() is None


def test_a_category_the_reference_never_saw_is_drift_not_a_crash(
    reference: ReferenceProfile,
) -> None:
    monitor = DriftMonitor(reference, window=300, min_count=300)
    for observation in traffic(np.random.default_rng(4), 300):
        monitor.observe(Observation("not_a_digit", observation.top1, observation.inputs))
    report = monitor.evaluate()
    assert report is not None and report.drifted
    assert all(math.isfinite(t.statistic) for t in report.tests)


def test_bad_monitor_settings_are_refused(reference: ReferenceProfile) -> None:
    with pytest.raises(ValueError, match="min_count"):
        DriftMonitor(reference, window=100, min_count=200)
