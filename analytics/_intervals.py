"""Confidence intervals for sums and ratios of DP-noised values. Pure functions.

A fleet total is the sum of many devices' released values; its error is the sum of their
independent noise draws. Two interval methods, chosen per cell:

- ``normal``: estimate ± z·sqrt(variance). Used when the noise sum is close to normal,
  judged by its excess kurtosis (sum of fourth cumulants / variance²; the noise is
  symmetric so skewness is zero). At the threshold 0.1 (30 equal Laplace draws), the
  Cornish-Fisher correction moves the 95% quantile by under 0.01·z, about 0.001 of
  coverage.
- ``bound``: for cells whose noise is dominated by a few draws, a distribution-aware
  guarantee instead of an approximation: the smaller of Chebyshev's half-width
  sqrt(V/alpha) and the Chernoff half-width min over lam of (K(lam) + log(2/alpha))/lam,
  where K bounds the noise sum's cumulant generating function (`analytics._noise`).
  Both hold exactly for any number of devices; they are wider than the truth.
- ``exact`` (`analytics._exact`): the noise sum's own quantile, for secure aggregates
  (two discrete Laplace draws per figure), whose law is known exactly.

A term's draws are in its mechanism's units times its `resolution` (the value of one
unit): its variance scales by resolution², its cumulant generating function is
K(resolution·lam), finite for lam < limit/resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import NormalDist

from analytics._errors import InvalidQueryError
from analytics._noise import NoiseTerm, noise_log_mgf_bound, noise_mgf_limit

__all__ = [
    "NORMAL_MAX_EXCESS_KURTOSIS",
    "NoiseTerm",
    "bound_half_width",
    "check_level",
    "normal_is_adequate",
    "ratio_interval",
    "z_value",
]

NORMAL_MAX_EXCESS_KURTOSIS = 0.1
"""Largest excess kurtosis of a cell's noise sum for which the normal interval is used."""

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def check_level(level: float) -> float:
    """Return `level` if it is a confidence level strictly between 0 and 1."""
    if not (isinstance(level, float | int) and 0.0 < level < 1.0):
        raise InvalidQueryError(f"confidence level must be strictly between 0 and 1, got {level!r}")
    return float(level)


def z_value(level: float) -> float:
    """Two-sided standard normal quantile: P(|Z| <= z) = level."""
    return NormalDist().inv_cdf(0.5 + check_level(level) / 2.0)


def normal_is_adequate(variance: float, fourth_cumulant: float) -> bool:
    """Whether a noise sum with these cumulants is close enough to normal."""
    if variance <= 0.0:
        return True  # no noise: the interval is the point
    return fourth_cumulant / (variance * variance) <= NORMAL_MAX_EXCESS_KURTOSIS


def _chernoff_half_width(terms: list[NoiseTerm], alpha: float) -> float:
    c = math.log(2.0 / alpha)
    limit = min(noise_mgf_limit(t.mechanism, t.scale) / t.resolution for t in terms)
    if math.isinf(limit):
        # Only (sub)Gaussian terms: K(lam) = lam²V/2, minimised in closed form.
        v = sum(t.count * (t.scale * t.resolution) ** 2 for t in terms)
        return math.sqrt(2.0 * v * c)

    def objective(lam: float) -> float:
        k = sum(
            t.count * noise_log_mgf_bound(t.mechanism, t.scale, t.resolution * lam) for t in terms
        )
        return (k + c) / lam

    # (K(lam) + c)/lam is unimodal on (0, limit) since K is convex with K(0) = 0:
    # golden-section search finds its minimum.
    lo, hi = limit * 1e-9, limit * (1.0 - 1e-12)
    a = hi - _GOLDEN * (hi - lo)
    b = lo + _GOLDEN * (hi - lo)
    fa, fb = objective(a), objective(b)
    for _ in range(200):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = objective(b)
        if hi - lo <= limit * 1e-12:
            break
    return min(fa, fb)


def bound_half_width(terms: Iterable[NoiseTerm], variance: float, level: float) -> float:
    """Half-width h with P(|noise sum| >= h) <= 1 - level, for any number of draws.

    The smaller of the Chebyshev and Chernoff half-widths; each is a valid bound, so
    their minimum is too.
    """
    alpha = 1.0 - check_level(level)
    live = [t for t in terms if t.count > 0 and t.scale > 0.0 and t.resolution > 0.0]
    if not live or variance <= 0.0:
        return 0.0
    chebyshev = math.sqrt(variance / alpha)
    return min(chebyshev, _chernoff_half_width(live, alpha))


def ratio_interval(
    num: float, num_var: float, den: float, den_var: float, z: float
) -> tuple[float, float]:
    """Fieller interval for num/den with independent, normal errors in num and den.

    The set of ratios r with (num - r·den)² <= z²(num_var + r²·den_var). It is bounded
    only if den is clearly non-zero (den² > z²·den_var); otherwise (nan, nan): the data
    cannot bound the ratio at this level. Near a precise denominator it matches the
    delta-method interval, and unlike it stays honest when the denominator is noisy.
    """
    a = den * den - z * z * den_var
    if a <= 0.0:
        return (math.nan, math.nan)
    b = num * den
    c = num * num - z * z * num_var
    disc = max(b * b - a * c, 0.0)  # >= 0 whenever a > 0; max() absorbs rounding
    root = math.sqrt(disc)
    return ((b - root) / a, (b + root) / a)
