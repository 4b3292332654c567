"""Effect sizes of a canary against its baseline, with intervals that carry the DP noise.
Pure functions.

Each side of a comparison is made of noisy fleet figures (`Figure`: an estimate and the
noise terms behind it, as `analytics._sources` reports them). Two effects:

- `ratio_effect`: the relative change of a mean, (S_c/C_c) / (S_b/C_b) - 1, for a
  histogram's sums S and event counts C;
- `difference_effect`: the change of a rate, E_c/R_c - E_b/R_b, for a counter E per
  request R (errors per request).

The interval propagates the noise to first order (the delta method): the error of log R
(ratio) or of the difference is, up to terms of the order of the figures' relative
errors squared, a weighted sum of the figures' independent noise draws,
sum_i w_i·N_i with w = ±1/figure (ratio) or ±1/R, ∓rate/R (difference). That sum's law
is known draw by draw, so its quantile is taken as every fleet figure's is
(`analytics._totals`): normal when its excess kurtosis is small, otherwise the exact
quantile of the weighted draws (`analytics._exact`, a weight being a resolution), or the
distribution-free bound (discrete Gaussian draws). Secure aggregates carry two draws
per figure, far from normal; the exact quantile keeps the interval honest there.

Sampling variation: a rate's is binomial, p(1-p)/R per side, estimable from the
figures themselves, and is added as a normal term. A mean's (the spread of single
events) is not: the released buckets are too noisy to estimate it usefully (a bucket's
noise is thousands of events under the default policy), so a ratio's interval is for
the fleet's own means in the compared windows, as every figure of the report is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from analytics._exact import exact_half_width
from analytics._intervals import bound_half_width, normal_is_adequate, z_value
from analytics._noise import NoiseTerm, noise_fourth_cumulant, noise_variance
from schemas import Mechanism

__all__ = ["Effect", "Figure", "difference_effect", "figure_half_width", "ratio_effect"]


@dataclass(frozen=True, slots=True)
class Figure:
    """A noisy fleet figure: the estimate and the noise draws added to its truth."""

    estimate: float
    terms: tuple[NoiseTerm, ...]


@dataclass(frozen=True, slots=True)
class Effect:
    """An effect size with its interval; `method` is how the interval's quantile was got."""

    estimate: float
    ci_low: float
    ci_high: float
    method: str

    @property
    def width(self) -> float:
        return self.ci_high - self.ci_low


def _weighted(parts: Sequence[tuple[float, Figure]], sampling_var: float) -> list[NoiseTerm]:
    terms = [
        NoiseTerm(t.mechanism, t.scale, t.count, t.resolution * abs(weight))
        for weight, figure in parts
        for t in figure.terms
        if weight != 0.0
    ]
    if sampling_var > 0.0:
        terms.append(NoiseTerm(Mechanism.GAUSSIAN, math.sqrt(sampling_var), 1, 1.0))
    return terms


def _half_width(terms: list[NoiseTerm], level: float) -> tuple[float, str]:
    """(half-width, method) of a sum of independent draws at two-sided `level`."""
    live = [t for t in terms if t.count > 0 and t.scale > 0.0 and t.resolution > 0.0]
    variance = sum(t.count * t.resolution**2 * noise_variance(t.mechanism, t.scale) for t in live)
    k4 = sum(t.count * t.resolution**4 * noise_fourth_cumulant(t.mechanism, t.scale) for t in live)
    if normal_is_adequate(variance, k4):
        return z_value(level) * math.sqrt(variance), "normal"
    exact = exact_half_width(live, level)
    if exact is not None:
        return exact, "exact"
    return bound_half_width(live, variance, level), "bound"


def figure_half_width(figure: Figure, level: float) -> float:
    """The half-width of one figure's own interval at `level`."""
    return _half_width(list(figure.terms), level)[0]


def _clearly_positive(figure: Figure, level: float) -> bool:
    # As for a mean's count (`analytics._exact`): a figure within its own noise of zero
    # cannot be divided by, nor its logarithm taken.
    return figure.estimate > figure_half_width(figure, level)


def ratio_effect(
    canary_sum: Figure,
    canary_count: Figure,
    baseline_sum: Figure,
    baseline_count: Figure,
    level: float,
) -> Effect | None:
    """(S_c/C_c) / (S_b/C_b) - 1 with its interval at `level`; None when a figure is not
    clearly above zero (the ratio is then not estimable)."""
    figures = (canary_sum, canary_count, baseline_sum, baseline_count)
    if not all(_clearly_positive(f, level) for f in figures):
        return None
    log_ratio = sum(
        sign * math.log(f.estimate) for sign, f in zip((1, -1, -1, 1), figures, strict=True)
    )
    half, method = _half_width(_weighted([(1.0 / f.estimate, f) for f in figures], 0.0), level)
    return Effect(
        estimate=math.expm1(log_ratio),
        ci_low=math.expm1(log_ratio - half),
        ci_high=math.expm1(log_ratio + half),
        method=method,
    )


def _rate_parts(
    events: Figure, requests: Figure
) -> tuple[float, list[tuple[float, Figure]], float]:
    """(rate, weighted noise parts, binomial sampling variance) of events / requests."""
    rate = events.estimate / requests.estimate
    p = min(max(rate, 0.0), 1.0)
    parts = [(1.0 / requests.estimate, events), (rate / requests.estimate, requests)]
    return rate, parts, p * (1.0 - p) / requests.estimate


def difference_effect(
    canary_events: Figure,
    canary_requests: Figure,
    baseline_events: Figure,
    baseline_requests: Figure,
    level: float,
) -> Effect | None:
    """E_c/R_c - E_b/R_b with its interval at `level` (DP noise and binomial sampling);
    None when a request count is not clearly above zero."""
    if not (
        _clearly_positive(canary_requests, level) and _clearly_positive(baseline_requests, level)
    ):
        return None
    rate_c, parts_c, var_c = _rate_parts(canary_events, canary_requests)
    rate_b, parts_b, var_b = _rate_parts(baseline_events, baseline_requests)
    half, method = _half_width(_weighted([*parts_c, *parts_b], var_c + var_b), level)
    diff = rate_c - rate_b
    return Effect(estimate=diff, ci_low=diff - half, ci_high=diff + half, method=method)
