"""Exact quantiles of a noise sum made of a few draws. Pure functions (numpy).

A secure aggregate carries two discrete Laplace draws (one per aggregator): far from
normal (excess kurtosis 1.5), and a distribution-free bound (Chebyshev, Chernoff) is
then much wider than it needs to be. The law of the noise is known exactly, so its
two-sided quantile is computed instead: the smallest h with P(|noise| <= h) >= level.

- **Lattice**: every term is discrete Laplace on one grid (the same resolution) and
  the sum's likely range is small. The pmf of the sum is the inverse FFT of the product
  of the terms' characteristic functions, (1-a)² / ((1-a)² + 4a·sin²(w/2)) per draw
  with a = exp(-1/t), evaluated on 2**k frequencies: exact up to the mass wrapped past
  the window, kept below 1e-13. The interval covers with probability exactly
  P(|S| <= h) >= level (only discreteness separates them).
- **Continuous**: otherwise. A discrete Laplace draw at scale t is floor(E1) - floor(E2)
  with E1, E2 exponential of mean t, and E1 - E2 is a Laplace draw at scale t: coupled
  that way the two differ by less than one unit. So the continuous sum's quantile plus
  one unit (x resolution) per discrete draw is a guaranteed half-width, wider than the
  exact one by at most that slack (for the policies' scales, well under 1%). The
  continuous sum's quantile is closed-form for n equal Laplace draws (S = G1 - G2 with
  G ~ Gamma(n, b); P(|S| > x) = 2e^{-y} sum_j c_j y^j, y = x/b) and otherwise comes from
  the Gil-Pelaez inversion of its characteristic function,
  P(|S| <= x) = (2/pi) ∫ phi(u) sin(ux)/u du, integrated by Simpson's rule past the
  point where the truncation error is below 1e-11.

Discrete Gaussian terms have no such coupling: `exact_half_width` returns None for
them, and callers fall back to the conservative bound.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import numpy as np

from analytics._noise import NoiseTerm
from schemas import Mechanism

__all__ = ["exact_half_width", "exact_ratio_interval"]

_LATTICE_TAIL = 1e-13
_MAX_LATTICE = 1 << 21
_MAX_GRID = 1 << 22
_INVERSION_ERROR = 1e-11
_POINTS_PER_PERIOD = 48

_Key = tuple[tuple[str, float, float, int], ...]


def _key(terms: Iterable[NoiseTerm]) -> _Key:
    """Live terms merged by (mechanism, scale, resolution), in a canonical order."""
    merged: dict[tuple[str, float, float], int] = {}
    for t in terms:
        if t.count > 0 and t.scale > 0.0 and t.resolution > 0.0:
            k = (Mechanism(t.mechanism).value, float(t.scale), float(t.resolution))
            merged[k] = merged.get(k, 0) + int(t.count)
    return tuple(sorted((m, s, r, n) for (m, s, r), n in merged.items()))


def exact_half_width(terms: Iterable[NoiseTerm], level: float) -> float | None:
    """Smallest half-width h (in value units) with P(|noise sum| <= h) >= `level`.

    Exact on a lattice, exact up to one unit per discrete draw otherwise (see the
    module doc); None when a term is a discrete Gaussian. `level` is in (0, 1).
    """
    key = _key(terms)
    if not key:
        return 0.0
    if any(m == Mechanism.DISCRETE_GAUSSIAN.value for m, _, _, _ in key):
        return None
    return _cached_half_width(key, level)


@functools.lru_cache(maxsize=4096)
def _cached_half_width(key: _Key, level: float) -> float:
    return _half_width(key, level)


def _half_width(key: _Key, level: float) -> float:
    lattice = _lattice_half_width(key, level)
    return lattice if lattice is not None else _continuous_half_width(key, level)


def _lattice_half_width(key: _Key, level: float) -> float | None:
    if any(m != Mechanism.DISCRETE_LAPLACE.value for m, _, _, _ in key):
        return None
    if len({r for _, _, r, _ in key}) != 1:
        return None
    resolution = key[0][2]
    draws = sum(n for _, _, _, n in key)
    # Union bound: |S| > reach needs some draw past t·log(2·draws/tail), each of which
    # has probability 2a^k/(1+a) <= 2e^{-k/t}, so P(|S| > reach) <= tail.
    reach = sum(n * math.ceil(t * math.log(2.0 * draws / _LATTICE_TAIL)) for _, t, _, n in key)
    size = 1 << (2 * reach + 2).bit_length()
    if size > _MAX_LATTICE:
        return None
    sin2 = np.sin(np.pi * np.arange(size // 2 + 1) / size) ** 2
    log_phi = np.zeros_like(sin2)
    for _, t, _, n in key:
        a = math.exp(-1.0 / t)
        c2 = math.expm1(-1.0 / t) ** 2  # (1 - a)², accurate for large t
        log_phi += n * (math.log(c2) - np.log(c2 + 4.0 * a * sin2))
    pmf = np.fft.irfft(np.exp(log_phi), n=size)
    central = np.concatenate(([pmf[0]], 2.0 * pmf[1 : reach + 1]))
    hits = np.flatnonzero(np.cumsum(central) >= level)
    if not hits.size:  # level within the truncated mass of 1: no lattice answer
        return None
    return float(hits[0]) * resolution


def _continuous_half_width(key: _Key, level: float) -> float:
    laplace: dict[float, int] = {}
    gauss_var = 0.0
    slack = 0.0
    for m, s, r, n in key:
        if m == Mechanism.GAUSSIAN.value:
            gauss_var += n * (s * r) ** 2
            continue
        laplace[s * r] = laplace.get(s * r, 0) + n
        if m == Mechanism.DISCRETE_LAPLACE.value:
            slack += n * r  # the coupling: < 1 unit per draw
    if gauss_var == 0.0 and len(laplace) == 1:
        ((b, n),) = laplace.items()
        return b * _iid_laplace_quantile(n, level) + slack
    return _inversion_quantile(sorted(laplace.items()), gauss_var, level) + slack


def _iid_laplace_quantile(n: int, level: float) -> float:
    """y with P(|S| > y) = 1 - level for S the sum of n Laplace draws at scale 1.

    S = G1 - G2 with G ~ Gamma(n, 1): P(S > y) = E[P(G1 > y + G2)] expands into
    e^{-y} sum_j c_j y^j, c_j = sum_{m < n-j} Gamma(m+n) / (Gamma(n) 2^(m+n) j! m!).
    """
    log_c = []
    for j in range(n):
        logs = [
            math.lgamma(m + n)
            - math.lgamma(n)
            - (m + n) * math.log(2.0)
            - math.lgamma(j + 1)
            - math.lgamma(m + 1)
            for m in range(n - j)
        ]
        top = max(logs)
        log_c.append(top + math.log(math.fsum(math.exp(v - top) for v in logs)))
    alpha = 1.0 - level

    def log_tail(y: float) -> float:  # log P(|S| > y)
        logs = [lc + (j * math.log(y) if j else 0.0) for j, lc in enumerate(log_c)]
        top = max(logs)
        return math.log(2.0) - y + top + math.log(math.fsum(math.exp(v - top) for v in logs))

    lo, hi = 0.0, math.sqrt(2.0 * n / alpha)  # Chebyshev: the tail at hi is <= alpha
    target = math.log(alpha)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if log_tail(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return hi


def _inversion_quantile(laplace: list[tuple[float, int]], gauss_var: float, level: float) -> float:
    """Two-sided `level` quantile of a sum of Laplace draws and a Gaussian (Gil-Pelaez)."""
    variance = sum(2.0 * n * b * b for b, n in laplace) + gauss_var
    gauss_sd = math.sqrt(gauss_var)

    def log_phi(u: np.ndarray) -> np.ndarray:
        out = -0.5 * gauss_var * u * u
        for b, n in laplace:
            out = out - n * np.log1p((b * u) ** 2)
        return np.asarray(out)

    # Bracket. Every term is symmetric and unimodal, so the sum is too (Wintner) and its
    # density at 0 is at most any one term's peak: P(|S| <= x) <= x / peak_scale.
    peak_scale = max([b for b, _ in laplace] + [gauss_sd * math.sqrt(math.pi / 2.0)])
    lo = level * peak_scale
    hi = math.sqrt(variance / (1.0 - level))  # Chebyshev
    # Truncation at U: for a decreasing phi(u)/u, |∫_U^∞ phi sin(ux)/u| <= 2phi(U)/(Ux).
    upper = 1.0 / peak_scale
    while 4.0 * math.exp(float(log_phi(np.array([upper]))[0])) / (math.pi * upper * lo) > (
        _INVERSION_ERROR
    ):
        upper *= 2.0
    features = [1.0 / (b * math.sqrt(n)) for b, n in laplace]
    if gauss_var > 0.0:
        features.append(1.0 / gauss_sd)
    step = min(2.0 * math.pi / hi, *features) / _POINTS_PER_PERIOD
    intervals = max(2, math.ceil(upper / step))
    intervals += intervals % 2
    if intervals > _MAX_GRID:  # pragma: no cover - needs scales 1e4 apart in one cell
        raise ValueError("noise sum too heterogeneous for the inversion grid")
    u = np.linspace(0.0, upper, intervals + 1)
    weights = np.ones(intervals + 1)
    weights[1:-1:2] = 4.0
    weights[2:-1:2] = 2.0
    weighted = np.exp(log_phi(u)) * weights * (upper / intervals / 3.0) * (2.0 / math.pi)

    def cdf(x: float) -> float:  # P(|S| <= x)
        return float(np.dot(weighted, x * np.sinc(u * (x / math.pi))))

    def density(x: float) -> float:  # d/dx P(|S| <= x)
        return float(np.dot(weighted, np.cos(u * x)))

    return _solve_increasing(cdf, density, level, lo, hi, math.sqrt(variance) * 1.96)


def _solve_increasing(
    f: Callable[[float], float],
    df: Callable[[float], float],
    target: float,
    lo: float,
    hi: float,
    start: float,
) -> float:
    """x in [lo, hi] with f(x) = target for increasing f: Newton, bisecting when it strays."""
    x = min(max(start, lo), hi)
    for _ in range(100):
        fx = f(x) - target
        if fx == 0.0:
            return x
        if fx < 0.0:
            lo = x
        else:
            hi = x
        slope = df(x)
        nxt = x - fx / slope if slope > 0.0 else math.nan
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - x) <= 1e-12 * x or hi - lo <= 1e-12 * hi:
            return nxt
        x = nxt
    return hi


def exact_ratio_interval(
    num: float,
    num_terms: Iterable[NoiseTerm],
    den: float,
    den_terms: Iterable[NoiseTerm],
    level: float,
) -> tuple[float, float] | None:
    """Fieller's construction with the exact noise laws: {r : |num - r·den| <= q(r)}.

    For the true ratio r, num - r·den is exactly the noise N_num - r·N_den, whose
    two-sided quantile q(r) `exact_half_width` gives; so the set covers r with
    probability >= level. Its endpoints are found outwards from num/den. (nan, nan) when
    the denominator is not clearly above zero (den <= its own noise quantile: the set is
    unbounded); None when a term's law has no exact quantile here.
    """
    nums, dens = tuple(num_terms), tuple(den_terms)
    q_den = exact_half_width(dens, level)
    if q_den is None or exact_half_width(nums, level) is None:
        return None
    if den <= q_den:
        return (math.nan, math.nan)

    def q(r: float) -> float:
        scaled = [NoiseTerm(t.mechanism, t.scale, t.count, t.resolution * abs(r)) for t in dens]
        key = _key((*nums, *scaled))
        return _half_width(key, level) if key else 0.0

    center = num / den
    q0 = q(center)
    if q0 == 0.0:
        return (center, center)
    upper = _first_root(lambda r: r * den - num - q(r), center, q0 / den)
    lower = _first_root(lambda r: num - r * den - q(r), center, -q0 / den)
    return (lower, upper)


def _first_root(g: Callable[[float], float], start: float, step: float) -> float:
    """The root of g nearest to `start` in the direction of `step` (g(start) < 0).

    Doubles the step until g changes sign, then the Illinois variant of regula falsi.
    """
    a, ga = start, g(start)
    b = start + step
    gb = g(b)
    for _ in range(200):
        if gb >= 0.0:
            break
        a, ga = b, gb
        step *= 2.0
        b = start + step
        gb = g(b)
    tolerance = 1e-12 * max(abs(b), abs(step))
    for _ in range(200):
        if gb == 0.0 or abs(b - a) <= tolerance:
            break
        c = b - gb * (b - a) / (gb - ga)
        gc = g(c)
        if (gc > 0.0) != (gb > 0.0):
            a, ga = b, gb
        else:
            ga *= 0.5
        b, gb = c, gc
    return b
