"""Interval arithmetic: the conservative bound, Fieller's ratio interval, the level check."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from analytics import InvalidQueryError
from analytics._intervals import (
    NoiseTerm,
    bound_half_width,
    check_level,
    normal_is_adequate,
    ratio_interval,
    z_value,
)
from analytics._noise import noise_variance
from schemas import Mechanism


def test_bound_covers_the_exact_single_laplace_quantile_and_beats_chebyshev() -> None:
    b, level = 10.0, 0.95
    var = noise_variance(Mechanism.LAPLACE, b)
    half = bound_half_width([NoiseTerm(Mechanism.LAPLACE, b, 1)], var, level)
    exact = b * math.log(1 / (1 - level))  # P(|X| >= x) = exp(-x/b)
    assert exact < half < math.sqrt(var / (1 - level))


def test_bound_for_gaussians_is_the_chernoff_closed_form() -> None:
    terms = [NoiseTerm(Mechanism.GAUSSIAN, 2.0, 4)]
    half = bound_half_width(terms, 16.0, 0.95)
    assert half == pytest.approx(math.sqrt(2 * 16.0 * math.log(2 / 0.05)))
    assert half > NormalDist(0, 4).inv_cdf(0.975)


def test_discrete_laplace_sum_bound_exceeds_the_normal_half_width() -> None:
    terms = [NoiseTerm(Mechanism.DISCRETE_LAPLACE, 8.0, 3)]
    var = 3 * noise_variance(Mechanism.DISCRETE_LAPLACE, 8.0)
    assert bound_half_width(terms, var, 0.95) > z_value(0.95) * math.sqrt(var)


def test_normal_is_used_only_for_many_laplace_draws() -> None:
    one = noise_variance(Mechanism.LAPLACE, 1.0)
    assert not normal_is_adequate(3 * one, 3 * 12.0)
    assert normal_is_adequate(30 * one, 30 * 12.0)
    assert normal_is_adequate(0.0, 0.0)


def test_ratio_interval_is_unbounded_when_the_denominator_may_be_zero() -> None:
    assert all(math.isnan(x) for x in ratio_interval(10.0, 1.0, 1.0, 4.0, 1.96))
    lo, hi = ratio_interval(500.0, 100.0, 100.0, 4.0, 1.96)
    assert lo < 5.0 < hi


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_bad_level_is_refused(level: float) -> None:
    with pytest.raises(InvalidQueryError, match="confidence level"):
        check_level(level)
