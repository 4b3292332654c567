"""The drift test's statistics and its two error rates, measured on simulated fleets.

Fleets are one day of the demo's usage model under a policy's own noise
(`tests/analytics/_drift_fleet.py`); everything is seeded, so the measured rates are
reproducible. Scenario: the local route's latency histogram, all its cells (as
`--where route=local` reads), compared between two days; with a real shift the second
day's local route is 20% slower. docs/analytics.md has the rates over more comparisons.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon  # type: ignore[import-untyped]
from scipy.stats import binom, wasserstein_distance  # type: ignore[import-untyped]

from analytics._drift_null import ALL_STATISTICS, HistogramSide, draw_noise, noise_aware_test
from analytics._drift_stats import bucket_midpoints, bucket_positions, distances
from analytics._noise import NoiseTerm, noise_variance
from schemas import Mechanism
from tests.analytics._drift_fleet import (
    CANARY_SHARE,
    LATENCY_MEDIAN,
    MODELS,
    ROUTES,
    SIX_HOURS,
    route_cells,
    simulate_side,
)

ALPHA = 0.01
DEMO_DEVICES = 4000
# Measured (docs/analytics.md): the local model reads a 20% shift at 95% from about
# 12 million devices on; 15 million is where these tests hold it.
LOCAL_READABLE_DEVICES = 15_000_000


def _consistent_with_alpha(rate: float, trials: int) -> bool:
    """Whether `rate` false alarms over `trials` comparisons are consistent with a rate of
    at most ALPHA: that many alarms or more happen with probability >= 0.001 at ALPHA.

    The test is calibrated (measured over 4,000 comparisons: 1.07% at alpha 1%), so a
    few hundred comparisons land on either side of 1% by chance alone.
    """
    alarms = round(rate * trials)
    return bool(binom.sf(alarms - 1, trials, ALPHA) >= 0.001)


def _rates(
    *, local: bool, devices: int, slowdown: float, trials: int, replicates: int, seed: int
) -> dict[str, float]:
    """Share of `trials` day-to-day comparisons whose verdict is drift, per statistic
    and for the family."""
    rng = np.random.default_rng(seed)
    cells = route_cells("local")
    alarms = np.zeros(len(ALL_STATISTICS) + 1)
    for _ in range(trials):
        a = simulate_side(rng, cells, devices=devices, local=local)
        b = simulate_side(
            rng, cells, devices=devices, local=local, slowdown=dict.fromkeys(cells, slowdown)
        )
        test = noise_aware_test(
            a,
            b,
            bucket_positions(a.uppers, "order"),
            alpha=ALPHA,
            replicates=replicates,
            rng=rng,
        )
        p = np.asarray([*test.p_values, test.family_p])
        alarms += np.nan_to_num(p, nan=1.0) <= ALPHA
    return dict(zip((*ALL_STATISTICS, "family"), (alarms / trials).tolist(), strict=True))


def test_the_usage_model_is_fleetsims() -> None:
    # Imported here: fleetsim pulls in the demo's wiring (client, ingest).
    from fleetsim import _simulation as simulation

    assert simulation.ROUTES == ROUTES
    assert (simulation.MODEL_STABLE, simulation.MODEL_CANARY) == MODELS
    assert simulation._LATENCY_MEDIAN == LATENCY_MEDIAN
    assert simulation.SIX_HOURS == SIX_HOURS
    assert simulation.FleetSpec().canary_share == CANARY_SHARE


def test_distances_are_scipys() -> None:
    rng = np.random.default_rng(5)
    uppers = (0.01, 0.02, 0.04, 0.08, 0.16, None)
    for positions in ("order", "edges"):
        pos = bucket_positions(uppers, positions)
        for _ in range(20):
            a = rng.integers(0, 1000, 6).astype(float)
            b = rng.integers(0, 1000, 6).astype(float)
            psi, js, w = distances(a, b, pos)
            p, q = a / a.sum(), b / b.sum()
            assert w == pytest.approx(wasserstein_distance(pos, pos, p, q), rel=1e-12, abs=1e-15)
            assert js == pytest.approx(jensenshannon(p, q, base=2.0), rel=1e-12)
            pf, qf = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
            pf, qf = pf / pf.sum(), qf / qf.sum()
            assert psi == pytest.approx(float(((pf - qf) * np.log(pf / qf)).sum()), rel=1e-12)


def test_negative_counts_are_clipped_and_an_empty_side_has_no_distance() -> None:
    pos = bucket_positions((1.0, 2.0, None), "order")
    assert distances([-5.0, 10.0, 0.0], [0.0, 10.0, 0.0], pos) == pytest.approx([0.0, 0.0, 0.0])
    assert np.isnan(distances([-1.0, -2.0, 0.0], [1.0, 1.0, 1.0], pos)).all()


def test_bucket_midpoints() -> None:
    assert bucket_midpoints((1.0, 2.0, 4.0, None)).tolist() == [0.5, 1.5, 3.0, 4.0]
    assert bucket_midpoints((-1.0, 1.0, None)).tolist() == [-2.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("term", "size"),
    [
        (NoiseTerm(Mechanism.DISCRETE_LAPLACE, 2540.0, 2), 200_000),
        (NoiseTerm(Mechanism.DISCRETE_LAPLACE, 352.4, 1_000_000), 200_000),
        (NoiseTerm(Mechanism.LAPLACE, 706.2, 3), 200_000),
        (NoiseTerm(Mechanism.DISCRETE_LAPLACE, 291266.7, 2, 128.0 / 65535.0), 200_000),
    ],
)
def test_noise_draws_have_the_declared_variance(term: NoiseTerm, size: int) -> None:
    draws = draw_noise((term,), size, np.random.default_rng(9))
    declared = term.count * term.resolution**2 * noise_variance(term.mechanism, term.scale)
    # The sample variance of 200,000 draws is within 2% (kurtosis 6 or less: sd 0.6%).
    assert draws.var() == pytest.approx(declared, rel=0.02)
    assert abs(draws.mean()) < 5.0 * np.sqrt(declared / size)


def test_noise_swamping_the_buckets_is_not_estimable() -> None:
    noise = (NoiseTerm(Mechanism.DISCRETE_LAPLACE, 2540.0, 2),)
    side = HistogramSide(
        buckets=np.asarray([3000.0, -2000.0, 5000.0]),
        uppers=(1.0, 2.0, None),
        shared_terms=((),) * 3,
        own_terms=(noise,) * 3,
        events=6000.0,
        events_terms=noise,
        total=6000.0,
        total_terms=noise,
    )
    test = noise_aware_test(
        side, side, np.arange(3.0), alpha=ALPHA, replicates=200, rng=np.random.default_rng(1)
    )
    assert test.estimable == (False, False, False, False)
    assert np.isnan(test.family_p)
    assert all(np.isnan(v) for v in test.values)


def test_aggregate_model_false_alarms_at_most_one_percent() -> None:
    rates = _rates(
        local=False, devices=DEMO_DEVICES, slowdown=1.0, trials=300, replicates=500, seed=101
    )
    assert all(_consistent_with_alpha(r, 300) for r in rates.values()), rates


def test_aggregate_model_detects_a_20_percent_slower_route_at_the_demo_size() -> None:
    rates = _rates(
        local=False, devices=DEMO_DEVICES, slowdown=1.2, trials=100, replicates=1000, seed=102
    )
    assert rates["family"] >= 0.95, rates
    assert rates["mean_shift"] >= 0.95, rates


def test_local_model_false_alarms_at_most_one_percent() -> None:
    rates = _rates(
        local=True,
        devices=LOCAL_READABLE_DEVICES,
        slowdown=1.0,
        trials=200,
        replicates=500,
        seed=103,
    )
    assert all(_consistent_with_alpha(r, 200) for r in rates.values()), rates


def test_local_model_detects_a_20_percent_slower_route_where_readable() -> None:
    rates = _rates(
        local=True,
        devices=LOCAL_READABLE_DEVICES,
        slowdown=1.2,
        trials=100,
        replicates=500,
        seed=104,
    )
    assert rates["family"] >= 0.95, rates
    assert rates["wasserstein"] >= 0.95, rates
