"""The canary test on a day's release, and exact binomial intervals for its rates."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from benchmarks._fleet import ROUTES, Layout
from benchmarks._releases import Part
from benchmarks._types import FloatArray

__all__ = ["canary_test", "clopper_pearson", "upper_tail"]

_Terms = list[tuple[Part, FloatArray]]


def upper_tail(z: FloatArray, sd: FloatArray, terms: _Terms) -> FloatArray:
    """P(N > z sd) for N = the sum over `terms` of weight x a part's entry noise (one
    independent entry per term), per trial: Gil-Pelaez inversion of N's characteristic
    function, P(N > x) = 1/2 - (1/pi) int_0^inf sin(u x) phi(u) / u du, on s = u sd."""
    z, out = np.atleast_1d(z), np.empty(len(np.atleast_1d(z)))
    for lo in range(0, len(z), 256):
        rows = slice(lo, lo + 256)
        zr, sdr = np.abs(z[rows]), np.broadcast_to(sd, z.shape)[rows]

        def log_phi(s: FloatArray, rows: slice = rows, sdr: FloatArray = sdr) -> FloatArray:
            total = np.zeros((len(sdr), len(s)))
            for part, weight in terms:
                w = np.broadcast_to(weight, z.shape)[rows]
                total += part.log_cf(np.outer(w / sdr, s))
            return total

        # Integrate until phi < 1e-12 everywhere: N is a sum of a few Laplace draws at
        # least, so phi decays polynomially; 25 steps per period of sin(s z).
        top = next(
            (t for t in (8.0, 16.0, 32.0, 64.0, 128.0) if log_phi(np.array([t])).max() < -27.6),
            256.0,
        )
        s = np.linspace(0.0, top, int(top * max(4.0, float(zr.max())) * 25 / (2 * np.pi)) + 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(s > 0, np.sin(np.outer(zr, s)) / s, zr[:, None]) * np.exp(log_phi(s))
        tail = 0.5 - np.trapezoid(f, s, axis=1) / np.pi
        out[rows] = np.where(z[rows] >= 0, tail, 1 - tail)
    return np.clip(out, 0.0, 1.0)


def canary_test(
    parts: dict[str, Part], layout: Layout, prefix: str, alpha: float, linear_max_noise: float
) -> tuple[int, int, float]:
    """(trials the test calls the canary slower, trials, the rate the noise model expects).

    One-sided test of mean(canary) > mean(stable) on the local route, on the difference
    of the means cleared of its denominators (Fieller): T = S_c C_s - S_s C_c, which is
    C_c C_s (m_c - m_s). To first order T's noise is C_s N(S_c) - S_s N(C_c) - C_c N(S_s)
    + S_c N(C_s): every noise term's weight comes from the other cell, so estimating the
    weights does not bias the test (the plain m_c - m_s with plug-in weights does: when
    its C_c comes out low, its noise sd comes out high, and at 1 epsilon per device-day
    it gave 0.2% false alarms for 0.5% designed, and less power). It rejects when P(noise > T) <
    alpha under the noise's exact law at the estimated weights: a sum of a few discrete
    Laplace draws, far heavier-tailed than a normal with its variance."""
    s, c = parts[f"{prefix}.sums"], parts[f"{prefix}.counts"]
    local = ROUTES.index("local")
    canary, stable = int(layout.latency_cell[local, 1]), int(layout.latency_cell[local, 0])

    def statistic(sv: FloatArray, cv: FloatArray) -> tuple[FloatArray, FloatArray, _Terms]:
        """(T, its noise sd, the noise's terms) per trial."""
        (sc, cc), (ss, cs) = (sv[:, canary], cv[:, canary]), (sv[:, stable], cv[:, stable])
        terms = [(s, cs), (c, ss), (s, cc), (c, sc)]
        var = sum(w**2 * part.variance for part, w in terms)
        return sc * cs - ss * cc, np.sqrt(np.asarray(var)), terms

    t, sd, terms = statistic(s.values, c.values)
    valid = (c.values[:, canary] > 0) & (c.values[:, stable] > 0)
    z = np.where(valid, t / sd, -1.0)
    # Cantelli: P(N > z sd) <= 1 / (1 + z^2) for any noise, so past that z it is below alpha.
    sure = z > math.sqrt(1 / alpha - 1)
    test = np.flatnonzero(valid & (z > 0) & ~sure)
    p = upper_tail(z[test], sd[test], [(part, w[test]) for part, w in terms])
    slower = int(sure.sum() + (p < alpha).sum())
    # Expected: the noise law at the clamped values, averaged over trials; not where a count
    # is so noisy that the first-order law does not hold.
    if math.sqrt(c.variance) > linear_max_noise * float(c.clamped[:, canary].mean()):
        return slower, len(z), math.nan
    true_t, true_sd, true_terms = statistic(s.clamped, c.clamped)
    mean_sd = np.array([true_sd.mean()])
    mean_terms = [(part, np.array([w.mean()])) for part, w in true_terms]
    lo, hi = 0.0, math.sqrt(1 / alpha - 1)
    for _ in range(40):  # the threshold, in noise sds: P(N > x sd) = alpha
        mid = (lo + hi) / 2
        above = upper_tail(np.array([mid]), mean_sd, mean_terms)[0] > alpha
        lo, hi = (mid, hi) if above else (lo, mid)
    expected = upper_tail((lo * mean_sd - true_t) / mean_sd, mean_sd, mean_terms)
    return slower, len(z), float(expected.mean())


def _binomial_tail(k: int, n: int, p: float, upper: bool) -> float:
    """P(X <= k) (or P(X >= k) if `upper`) for X ~ Binomial(n, p), 0 < p < 1."""
    lp, lq, ln = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    terms = range(k, n + 1) if upper else range(k + 1)
    return math.fsum(
        math.exp(ln - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
        for i in terms
    )


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial rate k / n."""
    a = (1 - level) / 2

    def solve(f: Callable[[float], float]) -> float:  # f increasing in p, f(0) < 0 < f(1)
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
        return (lo + hi) / 2

    # The rarer side's sum is the shorter one: sum it, and take its complement if needed.
    def at_least(j: int, p: float) -> float:
        if 2 * j > n:
            return _binomial_tail(j, n, p, upper=True)
        return 1 - _binomial_tail(j - 1, n, p, upper=False)

    low = 0.0 if k == 0 else solve(lambda p: at_least(k, p) - a)
    high = 1.0 if k == n else solve(lambda p: a - (1 - at_least(k + 1, p)))
    return low, high
