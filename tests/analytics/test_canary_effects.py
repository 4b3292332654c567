"""Canary effect sizes: estimates, the width of their intervals, and their coverage under
real OpenDP noise (two discrete Laplace draws per figure, as secure aggregates carry)."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from analytics._canary_effects import (
    Figure,
    difference_effect,
    figure_half_width,
    ratio_effect,
)
from analytics._noise import NoiseTerm
from schemas import Mechanism
from tests.analytics._fleet import discrete_laplace

DL = Mechanism.DISCRETE_LAPLACE


def exact(value: float) -> Figure:
    """A figure without noise."""
    return Figure(value, ())


def secure(value: float, scale: float, resolution: float = 1.0) -> Figure:
    """A secure aggregate's figure: two discrete Laplace draws at `scale` units."""
    return Figure(value, (NoiseTerm(DL, scale, 2, resolution),))


def test_without_noise_the_interval_is_the_point() -> None:
    effect = ratio_effect(exact(130.0), exact(100.0), exact(200.0), exact(200.0), 0.9)
    assert effect is not None
    assert effect.estimate == pytest.approx(0.30)
    assert (effect.ci_low, effect.ci_high) == pytest.approx((0.30, 0.30))


def test_a_rate_difference_carries_its_binomial_sampling_variation() -> None:
    # 4% of 10,000 against 1% of 40,000, no DP noise: the sampling variance alone.
    effect = difference_effect(exact(400.0), exact(10_000.0), exact(400.0), exact(40_000.0), 0.95)
    assert effect is not None
    assert effect.estimate == pytest.approx(0.03)
    sd = math.sqrt(0.04 * 0.96 / 10_000 + 0.01 * 0.99 / 40_000)
    half = NormalDist().inv_cdf(0.975) * sd
    assert (effect.ci_low, effect.ci_high) == pytest.approx((0.03 - half, 0.03 + half))
    assert effect.method == "normal"


def test_many_local_draws_give_the_delta_method_interval() -> None:
    # 4,000 Laplace draws per figure (a local-model cell): close to normal.
    terms = (NoiseTerm(Mechanism.LAPLACE, 2.0, 4000),)
    sc, cc, sb, cb = (Figure(v, terms) for v in (2400.0, 2000.0, 2000.0, 2000.0))
    effect = ratio_effect(sc, cc, sb, cb, 0.95)
    assert effect is not None
    assert effect.method == "normal"
    var_each = 4000 * 2 * 2.0**2
    sd_log = math.sqrt(sum(var_each / v**2 for v in (2400.0, 2000.0, 2000.0, 2000.0)))
    half = NormalDist().inv_cdf(0.975) * sd_log
    assert effect.ci_low == pytest.approx(1.2 * math.exp(-half) - 1.0)
    assert effect.ci_high == pytest.approx(1.2 * math.exp(half) - 1.0)


def test_two_draws_per_figure_get_the_exact_quantile_not_the_normal() -> None:
    sc, cc, sb, cb = (secure(v, 500.0) for v in (30_000.0, 25_000.0, 90_000.0, 100_000.0))
    effect = ratio_effect(sc, cc, sb, cb, 0.95)
    assert effect is not None
    assert effect.method == "exact"
    assert effect.ci_low < effect.estimate < effect.ci_high


def test_a_figure_within_its_noise_of_zero_is_not_estimable() -> None:
    tiny = secure(50.0, 500.0)  # its own 90% half-width is about 1,800
    assert figure_half_width(tiny, 0.9) > 50.0
    assert (
        ratio_effect(secure(1e5, 500.0), tiny, secure(1e5, 500.0), secure(1e5, 500.0), 0.9) is None
    )
    assert difference_effect(exact(1.0), tiny, exact(1.0), exact(100.0), 0.9) is None


def _noisy(true: float, scale: float, n: int, resolution: float = 1.0) -> list[float]:
    """`n` realisations of a secure aggregate: truth plus two OpenDP discrete Laplace draws."""
    meas = discrete_laplace(scale)
    first, second = meas([0] * n), meas([0] * n)
    return [true + (int(a) + int(b)) * resolution for a, b in zip(first, second, strict=True)]


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_ratio_intervals_cover_the_true_effect(level: float) -> None:
    # The demo's local route at its scales: sums in units of 128/65535 s at 291,267
    # units, counts at 564 events; canary 30% slower. 600 independent comparisons.
    n = 600
    res = 128.0 / 65535.0
    truth = {"sc": 34_000.0, "cc": 28_000.0, "sb": 84_000.0, "cb": 93_000.0}
    true_effect = (truth["sc"] / truth["cc"]) / (truth["sb"] / truth["cb"]) - 1.0
    sc = _noisy(truth["sc"], 291_267.0, n, res)
    cc = _noisy(truth["cc"], 564.0, n)
    sb = _noisy(truth["sb"], 291_267.0, n, res)
    cb = _noisy(truth["cb"], 564.0, n)
    inside = 0
    for i in range(n):
        effect = ratio_effect(
            secure(sc[i], 291_267.0, res),
            secure(cc[i], 564.0),
            secure(sb[i], 291_267.0, res),
            secure(cb[i], 564.0),
            level,
        )
        assert effect is not None
        inside += int(effect.ci_low <= true_effect <= effect.ci_high)
    # Binomial(600, level): 5.3 standard deviations below the level fails a correct
    # build with probability below 1e-6; the first-order propagation may only widen.
    sd = math.sqrt(level * (1.0 - level) / n)
    assert inside / n >= level - 5.3 * sd
    assert inside / n <= min(1.0, level + 5.3 * sd)


def test_difference_intervals_cover_the_true_effect() -> None:
    # Errors at scale 150 (the demo's inference.errors cells), requests at scale 2,044.
    n = 600
    ec, rc, eb, rb = 1_700.0, 42_000.0, 560.0, 113_000.0
    true_effect = ec / rc - eb / rb
    e_c, r_c = _noisy(ec, 150.0, n), _noisy(rc, 2044.0, n)
    e_b, r_b = _noisy(eb, 150.0, n), _noisy(rb, 2044.0, n)
    inside = 0
    for i in range(n):
        effect = difference_effect(
            secure(e_c[i], 150.0), secure(r_c[i], 2044.0),
            secure(e_b[i], 150.0), secure(r_b[i], 2044.0),
            0.9,
        )  # fmt: skip
        assert effect is not None
        inside += int(effect.ci_low <= true_effect <= effect.ci_high)
    sd = math.sqrt(0.9 * 0.1 / n)
    # The binomial term is for a population beyond the fleet; against the fleet's own
    # rates it only widens: at least the level.
    assert inside / n >= 0.9 - 5.3 * sd
