"""The variance formulas against the empirical variance of real OpenDP draws.

OpenDP noise is not seedable. Each check allows 5.5 standard deviations of the sample
variance, computed from the fourth cumulant ((k4 + 2·var²)/n), so a correct formula
fails with probability below 1e-7 per check, while the tested scales are chosen where
the naive formulas (2t² for discrete Laplace, s² for discrete Gaussian) are off by
more than 10 such standard deviations.
"""

from __future__ import annotations

import math

import opendp.prelude as dp
import pytest

from analytics import noise_fourth_cumulant, noise_variance
from schemas import Mechanism

dp.enable_features("contrib")

_N = 20_000


def _draws(mechanism: Mechanism, scale: float) -> list[float]:
    if mechanism is Mechanism.DISCRETE_LAPLACE:
        space = (dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int))
        meas, zero = dp.m.make_laplace(*space, scale=scale), 0
    elif mechanism is Mechanism.LAPLACE:
        space = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float))
        meas, zero = dp.m.make_laplace(*space, scale=scale), 0.0
    elif mechanism is Mechanism.DISCRETE_GAUSSIAN:
        space = (dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=float))
        meas, zero = dp.m.make_gaussian(*space, scale=scale), 0
    else:
        space = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float))
        meas, zero = dp.m.make_gaussian(*space, scale=scale), 0.0
    return [float(x) for x in meas([zero] * _N)]


@pytest.mark.parametrize(
    ("mechanism", "scale"),
    [
        (Mechanism.DISCRETE_LAPLACE, 0.5),
        (Mechanism.DISCRETE_LAPLACE, 8.0),
        (Mechanism.LAPLACE, 3.0),
        (Mechanism.DISCRETE_GAUSSIAN, 0.5),
        (Mechanism.DISCRETE_GAUSSIAN, 4.0),
        (Mechanism.GAUSSIAN, 2.0),
    ],
)
def test_variance_matches_opendp_draws(mechanism: Mechanism, scale: float) -> None:
    xs = _draws(mechanism, scale)
    empirical = sum(x * x for x in xs) / len(xs)  # the noise has mean zero
    var = noise_variance(mechanism, scale)
    sd = math.sqrt((noise_fourth_cumulant(mechanism, scale) + 2 * var * var) / len(xs))
    assert abs(empirical - var) < 5.5 * sd, (empirical, var, sd)


def test_small_scale_formulas_differ_from_continuous_ones() -> None:
    # The tested small scales must tell the exact formulas from the naive ones.
    assert noise_variance(Mechanism.DISCRETE_LAPLACE, 0.5) < 0.75 * 2 * 0.5**2
    assert noise_variance(Mechanism.DISCRETE_GAUSSIAN, 0.5) < 0.9 * 0.5**2


def test_large_scales_converge_to_continuous_laws() -> None:
    assert noise_variance("discrete_laplace", 1e4) == pytest.approx(2e8, rel=1e-6)
    assert noise_variance("discrete_gaussian", 50.0) == 2500.0
    assert noise_variance("discrete_gaussian", 5.99) == pytest.approx(5.99**2, rel=1e-12)


def test_zero_scale_means_no_noise_and_bad_scale_is_refused() -> None:
    assert noise_variance("laplace", 0.0) == 0.0
    with pytest.raises(ValueError, match="scale"):
        noise_variance("laplace", -1.0)
    with pytest.raises(ValueError, match="is not a valid Mechanism"):
        noise_variance("uniform", 1.0)
