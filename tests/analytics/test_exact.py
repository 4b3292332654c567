"""Exact quantiles of noise sums (`analytics._exact`) against closed forms and direct sums.

Deterministic: the laws are computed, not sampled (sampled coverage is in
test_aggregates.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics._exact import exact_half_width, exact_ratio_interval
from analytics._intervals import NoiseTerm, bound_half_width
from analytics._noise import noise_variance
from schemas import Mechanism

DL = Mechanism.DISCRETE_LAPLACE
LAP = Mechanism.LAPLACE


def _dlap_pmf(t: float, reach: int) -> np.ndarray:
    a = math.exp(-1.0 / t)
    k = np.arange(-reach, reach + 1)
    return (1 - a) / (1 + a) * a ** np.abs(k)


def _central(pmf: np.ndarray) -> np.ndarray:
    """P(|S| <= k) for k = 0, 1, ... of a pmf centred in its array."""
    mid = len(pmf) // 2
    return np.cumsum(np.concatenate(([pmf[mid]], pmf[mid + 1 :] + pmf[mid - 1 :: -1])))


@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
def test_lattice_quantile_is_the_smallest_covering_half_width(level: float) -> None:
    # Two draws at scale 3 and three at scale 5, on one lattice: convolve directly.
    pmf = _dlap_pmf(3.0, 400)
    pmf = np.convolve(pmf, pmf)
    for _ in range(3):
        pmf = np.convolve(pmf, _dlap_pmf(5.0, 400))
    cdf = _central(pmf)
    terms = [NoiseTerm(DL, 3.0, 2), NoiseTerm(DL, 5.0, 3)]
    half = exact_half_width(terms, level)
    assert half is not None
    k = round(half)
    assert half == k
    assert cdf[k] >= level > cdf[k - 1]


def test_resolution_scales_the_lattice() -> None:
    unit = exact_half_width([NoiseTerm(DL, 40.0, 2)], 0.95)
    scaled = exact_half_width([NoiseTerm(DL, 40.0, 2, 0.25)], 0.95)
    assert unit is not None
    assert scaled == pytest.approx(0.25 * unit)


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_equal_laplace_draws_closed_form_matches_the_inversion(n: int) -> None:
    closed = exact_half_width([NoiseTerm(LAP, 2.0, n)], 0.95)
    # Adding a negligible second scale forces the Gil-Pelaez inversion.
    inverted = exact_half_width([NoiseTerm(LAP, 2.0, n), NoiseTerm(LAP, 1e-6, 1)], 0.95)
    assert closed is not None
    assert inverted == pytest.approx(closed, rel=1e-7)
    if n == 1:  # P(|X| > x) = exp(-x/b)
        assert closed == pytest.approx(-2.0 * math.log(0.05), rel=1e-10)


def test_two_laplace_scales_match_their_closed_form() -> None:
    # CF 1/((1+b1²u²)(1+b2²u²)) splits into partial fractions:
    # P(|S| > x) = (b1² e^{-x/b1} - b2² e^{-x/b2}) / (b1² - b2²).
    b1, b2 = 3.0, 1.0
    half = exact_half_width([NoiseTerm(LAP, b1, 1), NoiseTerm(LAP, b2, 1)], 0.95)
    assert half is not None
    tail = (b1**2 * math.exp(-half / b1) - b2**2 * math.exp(-half / b2)) / (b1**2 - b2**2)
    assert tail == pytest.approx(0.05, rel=1e-7)


def test_large_discrete_scales_are_within_one_unit_per_draw_of_exact() -> None:
    # At t = 1000 both paths are available: the lattice (exact) and the continuous
    # Laplace plus the coupling slack (one unit per draw), which must not under-cover.
    from analytics._exact import _continuous_half_width, _key, _lattice_half_width

    key = _key([NoiseTerm(DL, 1000.0, 2)])
    exact = _lattice_half_width(key, 0.95)
    coupled = _continuous_half_width(key, 0.95)
    assert exact is not None
    assert exact <= coupled <= exact + 3.0


def test_discrete_gaussian_has_no_exact_quantile_here() -> None:
    assert exact_half_width([NoiseTerm(Mechanism.DISCRETE_GAUSSIAN, 3.0, 2)], 0.95) is None
    assert exact_half_width([], 0.95) == 0.0


def test_the_bound_is_valid_but_wide_for_two_aggregator_draws() -> None:
    # The distribution-free bound (with resolution) against the exact law of two draws.
    t, res = 500.0, 0.01
    terms = [NoiseTerm(DL, t, 2, res)]
    var = 2 * res**2 * noise_variance(DL, t)
    bound = bound_half_width(terms, var, 0.95)
    unit_bound = bound_half_width([NoiseTerm(DL, t, 2)], var / res**2, 0.95)
    assert bound == pytest.approx(res * unit_bound, rel=1e-9)
    # Two draws in closed form: P(S = k) = ((1-a)/(1+a))² a^|k| (|k| + (1+a²)/(1-a²)).
    a = math.exp(-1.0 / t)
    k = np.arange(-40_000, 40_001)
    pmf = ((1 - a) / (1 + a)) ** 2 * a ** np.abs(k) * (np.abs(k) + (1 + a * a) / (1 - a * a))
    cdf = _central(pmf)
    exact = exact_half_width(terms, 0.95)
    assert exact is not None
    assert cdf[round(exact / res)] >= 0.95
    covered = cdf[math.floor(bound / res)]
    assert covered > 0.98  # conservative: it covers about 99%, not 95%
    assert bound > 1.2 * exact


def test_ratio_interval_without_count_noise_is_the_sum_interval_scaled() -> None:
    sums = [NoiseTerm(DL, 5000.0, 2, 0.01)]
    q = exact_half_width(sums, 0.95)
    assert q is not None
    interval = exact_ratio_interval(1000.0, sums, 800.0, [], 0.95)
    assert interval is not None
    assert interval[0] == pytest.approx((1000.0 - q) / 800.0, rel=1e-9)
    assert interval[1] == pytest.approx((1000.0 + q) / 800.0, rel=1e-9)


def test_ratio_interval_widens_with_count_noise_and_needs_a_clear_count() -> None:
    sums = [NoiseTerm(DL, 5000.0, 2, 0.01)]
    counts = [NoiseTerm(DL, 20.0, 2)]
    plain = exact_ratio_interval(1000.0, sums, 800.0, [], 0.95)
    noisy = exact_ratio_interval(1000.0, sums, 800.0, counts, 0.95)
    assert plain is not None
    assert noisy is not None
    assert noisy[0] < plain[0] < 1000.0 / 800.0 < plain[1] < noisy[1]
    q_count = exact_half_width(counts, 0.95)
    assert q_count is not None
    unbounded = exact_ratio_interval(1000.0, sums, q_count * 0.9, counts, 0.95)
    assert unbounded is not None
    assert all(math.isnan(x) for x in unbounded)
    assert (
        exact_ratio_interval(
            1.0, [NoiseTerm(Mechanism.DISCRETE_GAUSSIAN, 1.0, 2)], 10.0, counts, 0.95
        )
        is None
    )
