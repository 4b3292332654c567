"""The noise of one released value, as OpenDP's measurements define it. Pure functions.

Every released value carries its mechanism and `scale` (`schemas.NoiseSpec`). The
functions here turn that pair into what an interval needs:

- `noise_variance`: the exact variance of the added noise;
- `noise_fourth_cumulant`: its fourth cumulant, which says how far from normal a sum of
  such draws still is (the noise is symmetric, so the third cumulant is zero);
- `noise_log_mgf_bound`: an upper bound on its cumulant generating function
  log E[exp(lam * X)], used by the Chernoff bound for cells with few devices;
- `noise_mgf_limit`: the largest lam for which that bound is finite;
- `NoiseTerm`: `count` draws of one mechanism at one scale, times a `resolution`, as a
  cell's noise is made of.

The distributions, as OpenDP 0.16 samples them (`dp.m.make_laplace` on an integer
domain is the discrete Laplace; `dp.m.make_gaussian` on an integer domain is the
discrete Gaussian):

- discrete_laplace, scale t: P(k) ∝ exp(-|k|/t) on the integers;
  variance 2a/(1-a)² with a = exp(-1/t).
- laplace, scale b: density ∝ exp(-|x|/b); variance 2b².
- discrete_gaussian, scale s: P(k) ∝ exp(-k²/(2s²)) on the integers;
  variance sum of k²P(k) (an exact series, slightly below s²).
- gaussian, scale s: N(0, s²); variance s².

The discrete Gaussian's variance has no closed form. Below `_DG_SERIES_MAX_SIGMA` the
series is summed term by term (truncated where the terms fall below 1e-300 of the
peak, so the sum is exact in double precision); above it, s² is used: by Poisson
summation the relative gap is about 4π²s²·exp(-2π²s²), below 1e-300 for s >= 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas import Mechanism

__all__ = [
    "NoiseTerm",
    "noise_fourth_cumulant",
    "noise_log_mgf_bound",
    "noise_mgf_limit",
    "noise_variance",
]

_DG_SERIES_MAX_SIGMA = 6.0


@dataclass(frozen=True, slots=True)
class NoiseTerm:
    """`count` independent draws of one mechanism at one scale, within one cell.

    `scale` is in the mechanism's own units; each draw is multiplied by `resolution`,
    the value of one unit (1 for a device's local release; a secure aggregate's entries
    are integers in units of its task's resolution). So the term's variance is
    count x resolution² x noise_variance(mechanism, scale).
    """

    mechanism: Mechanism
    scale: float
    count: int
    resolution: float = 1.0


def _check_scale(scale: float) -> None:
    if not math.isfinite(scale) or scale < 0.0:
        raise ValueError(f"noise scale must be finite and >= 0, got {scale!r}")


def _discrete_gaussian_moments(sigma: float) -> tuple[float, float]:
    """E[X²] and E[X⁴] of the discrete Gaussian, by the series."""
    # Terms exp(-k²/2s²) < 1e-300 · peak once k > s·sqrt(2·691); sum both tails (k and -k).
    k_max = math.ceil(sigma * math.sqrt(2.0 * 691.0)) + 1
    total = 1.0  # k = 0
    second = 0.0
    fourth = 0.0
    for k in range(1, k_max + 1):
        w = 2.0 * math.exp(-(k * k) / (2.0 * sigma * sigma))
        total += w
        second += k * k * w
        fourth += k**4 * w
    return second / total, fourth / total


def noise_variance(mechanism: Mechanism | str, scale: float) -> float:
    """Variance of the noise OpenDP adds with `mechanism` at `scale` (0 for scale 0)."""
    mech = Mechanism(mechanism)
    _check_scale(scale)
    if scale == 0.0:
        return 0.0
    if mech is Mechanism.DISCRETE_LAPLACE:
        # 2a/(1-a)² with a = e^{-1/t}; expm1 keeps 1-a accurate for large t.
        a = math.exp(-1.0 / scale)
        one_minus_a = -math.expm1(-1.0 / scale)
        return 2.0 * a / (one_minus_a * one_minus_a)
    if mech is Mechanism.LAPLACE:
        return 2.0 * scale * scale
    if mech is Mechanism.GAUSSIAN:
        return scale * scale
    if scale >= _DG_SERIES_MAX_SIGMA:
        return scale * scale
    return _discrete_gaussian_moments(scale)[0]


def noise_fourth_cumulant(mechanism: Mechanism | str, scale: float) -> float:
    """Fourth cumulant E[X⁴] - 3·Var(X)² of the noise (0 for a Gaussian).

    Cumulants add over independent draws, so a cell's excess kurtosis is
    sum(fourth cumulants) / sum(variances)²: how far its total is from normal.
    Discrete Laplace is the difference of two geometric draws, whose fourth cumulant is
    a(1+4a+a²)/(1-a)⁴; it tends to the Laplace's 12b⁴ as t grows.
    """
    mech = Mechanism(mechanism)
    _check_scale(scale)
    if scale == 0.0 or mech is Mechanism.GAUSSIAN:
        return 0.0
    if mech is Mechanism.LAPLACE:
        return 12.0 * scale**4
    if mech is Mechanism.DISCRETE_LAPLACE:
        a = math.exp(-1.0 / scale)
        one_minus_a = -math.expm1(-1.0 / scale)
        return 2.0 * a * (1.0 + 4.0 * a + a * a) / one_minus_a**4
    if scale >= _DG_SERIES_MAX_SIGMA:
        return 0.0
    second, fourth = _discrete_gaussian_moments(scale)
    return fourth - 3.0 * second * second


def noise_mgf_limit(mechanism: Mechanism | str, scale: float) -> float:
    """Supremum of lam where `noise_log_mgf_bound` is finite (inf for Gaussian tails)."""
    mech = Mechanism(mechanism)
    _check_scale(scale)
    if scale == 0.0 or mech in (Mechanism.GAUSSIAN, Mechanism.DISCRETE_GAUSSIAN):
        return math.inf
    return 1.0 / scale


def noise_log_mgf_bound(mechanism: Mechanism | str, scale: float, lam: float) -> float:
    """An upper bound on log E[exp(lam·X)] for the noise X, for 0 <= lam < the limit.

    Exact for Laplace (-log(1 - lam²b²)), Gaussian (lam²s²/2) and discrete Laplace
    (2·log(1-a) - log(1 - a·e^lam) - log(1 - a·e^-lam)). For the discrete Gaussian it
    is lam²s²/2, the bound of Canonne, Kamath and Steinke (2020, Cor. 9: the discrete
    Gaussian is s-subgaussian). Returns inf at or past the limit.
    """
    mech = Mechanism(mechanism)
    _check_scale(scale)
    if lam < 0.0:
        raise ValueError("lam must be >= 0")
    if scale == 0.0 or lam == 0.0:
        return 0.0
    if mech in (Mechanism.GAUSSIAN, Mechanism.DISCRETE_GAUSSIAN):
        return 0.5 * lam * lam * scale * scale
    if lam * scale >= 1.0:
        return math.inf
    if mech is Mechanism.LAPLACE:
        return -math.log1p(-((lam * scale) ** 2))
    # Discrete Laplace: 1 - a·e^{±lam} = -expm1(±lam - 1/t), accurate near the limit.
    inv = 1.0 / scale
    return (
        2.0 * math.log(-math.expm1(-inv))
        - math.log(-math.expm1(lam - inv))
        - math.log(-math.expm1(-lam - inv))
    )
