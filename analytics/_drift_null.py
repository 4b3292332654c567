"""The drift test's null distribution: a parametric bootstrap from the declared noise.

Pure functions on arrays. Each side of a comparison is a histogram whose every figure
is the truth plus noise whose law the warehouse declares (mechanism, scale, draws,
resolution: `NoiseTerm`s). Under H0 both sides' events follow one distribution; its
estimate is the pooled histogram, p = shares(a + b) (clipped at zero). A replicate
draws, per side,

    buckets* = Multinomial(N_side, p)          sampling noise: the events themselves
             + that bucket's own noise draws   every term of the very cells compared
    events*  = N_side + the events' own draws  (locally the buckets' draws, added up)
    sum*     = N_side x pooled mean + sampling + the sum's own draws

with N_side the side's estimated events, and recomputes every statistic (the sum's
sampling spread comes from the pooled buckets that stand clear of their noise:
`_pooled_shares`). The observed
value's p-value is (1 + #{replicates >= observed}) / (1 + replicates): a Monte Carlo
test, exact when the null is. Noise sums are drawn exactly: n discrete Laplace draws at
scale t are NegBin(n, 1-e^(-1/t)) minus another (a discrete Laplace draw is the
difference of two geometric ones), n Laplace draws Gamma(n, b) minus another; n
discrete Gaussian draws are drawn as a normal of their exact variance.

Statistics: the three distances of `analytics._drift_stats` on the buckets, and
`mean_shift`, |mean_b - mean_a| / pooled mean from the cells' sums and counts: under
the default policy the buckets get a tenth of the latency budget and the counts and sums
nine tenths, so the mean reads a shift the buckets alone cannot (docs/analytics.md).
A statistic is *not estimable* when the noise swamps its data: for the distances, when
a side's bucket noise (sum of the buckets' standard deviations) is at least its events;
for the mean, when a side's events or sum are not clearly above zero (beyond the
(1-alpha) quantile of their noise). The family's verdict takes the smallest p-value of
the estimable statistics and calibrates it on the same replicates (Westfall and
Young's min-p), so it holds the false-alarm rate alpha for the family, not per statistic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from analytics._drift_stats import STATISTICS, Array, bucket_midpoints, distances, shares
from analytics._noise import NoiseTerm, noise_variance
from schemas import Mechanism

__all__ = [
    "ALL_STATISTICS",
    "HistogramSide",
    "NullTest",
    "draw_noise",
    "noise_aware_test",
]

ALL_STATISTICS = (*STATISTICS, "mean_shift")
Terms = tuple[NoiseTerm, ...]


@dataclass(frozen=True, slots=True)
class HistogramSide:
    """One side of a comparison: a histogram's noisy figures and the noise of each.

    `buckets[k]` carries the draws `shared_terms[k]` (local releases: the events are
    these buckets added, so they share their draws) and `own_terms[k]` (secure
    aggregates: the events come from a count entry with draws of its own,
    `events_terms`). `total` is the noisy sum of values (None if the side has no sums).
    """

    buckets: Array
    uppers: tuple[float | None, ...]
    shared_terms: tuple[Terms, ...]
    own_terms: tuple[Terms, ...]
    events: float
    events_terms: Terms
    total: float | None = None
    total_terms: Terms = ()
    devices: int = 0

    def __post_init__(self) -> None:
        n = len(self.uppers)
        if not (self.buckets.shape == (n,) and len(self.shared_terms) == len(self.own_terms) == n):
            raise ValueError("buckets, uppers and their noise terms must have one entry each")

    @property
    def bucket_sd(self) -> Array:
        """Each bucket's noise standard deviation."""
        return np.sqrt(
            [
                _variance(s) + _variance(o)
                for s, o in zip(self.shared_terms, self.own_terms, strict=True)
            ]
        )

    @property
    def events_sd(self) -> float:
        """Standard deviation of the events' noise (shared bucket draws and own draws)."""
        return math.sqrt(
            sum(_variance(s) for s in self.shared_terms) + _variance(self.events_terms)
        )

    @property
    def total_sd(self) -> float:
        return math.sqrt(_variance(self.total_terms))


@dataclass(frozen=True, slots=True)
class NullTest:
    """Per statistic (`ALL_STATISTICS` order): value, null threshold, p-value, estimable."""

    values: tuple[float, ...]
    thresholds: tuple[float, ...]
    p_values: tuple[float, ...]
    estimable: tuple[bool, ...]
    family_p: float
    """The min-p family's p-value (NaN when no statistic is estimable)."""
    mean_a: float
    mean_b: float
    replicates: int
    notes: tuple[str, ...] = field(default=())


def _variance(terms: Terms) -> float:
    return sum(t.count * t.resolution**2 * noise_variance(t.mechanism, t.scale) for t in terms)


def draw_noise(terms: Terms, size: int | tuple[int, ...], rng: np.random.Generator) -> Array:
    """`size` independent draws of the sum of `terms`' noise (see the module docstring)."""
    out = np.zeros(size, dtype=np.float64)
    for t in terms:
        if t.count <= 0 or t.scale == 0.0:
            continue
        mech = Mechanism(t.mechanism)
        if mech is Mechanism.DISCRETE_LAPLACE:
            p = -math.expm1(-1.0 / t.scale)
            draw: Array = (
                rng.negative_binomial(t.count, p, size) - rng.negative_binomial(t.count, p, size)
            ).astype(np.float64)
        elif mech is Mechanism.LAPLACE:
            draw = rng.gamma(t.count, t.scale, size) - rng.gamma(t.count, t.scale, size)
        elif mech is Mechanism.GAUSSIAN:
            draw = rng.normal(0.0, t.scale * math.sqrt(t.count), size)
        else:
            sd = math.sqrt(t.count * noise_variance(mech, t.scale))
            draw = rng.normal(0.0, sd, size)
        out += draw * t.resolution
    return out


def _widths(uppers: Sequence[float | None], mids: Array) -> Array:
    # Uniform within a bucket: the overflow bucket (a point at the last edge) has none.
    return np.asarray(
        [0.0 if u is None else 2.0 * (u - m) for u, m in zip(uppers, mids, strict=True)]
    )


def _p_values(values: Array, null: Array) -> Array:
    """(1 + #{null >= value}) / (1 + R) per column; NaN values give NaN."""
    r = null.shape[0]
    exceed = (null >= values[None, :]).sum(axis=0)
    p: Array = (1.0 + exceed) / (1.0 + r)
    return np.where(np.isnan(values), np.nan, p)


def _mean_shift(s_a: Array, c_a: Array, s_b: Array, c_b: Array) -> Array:
    """|mean_b - mean_a| / pooled mean; inf where a side's mean is undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (s_a + s_b) / (c_a + c_b)
        shift = np.abs(s_b / c_b - s_a / c_a) / pooled
    ok = (c_a > 0.0) & (c_b > 0.0) & (pooled > 0.0)
    out: Array = np.where(ok, shift, np.inf)
    return out


class _Replicates:
    """Draws one side's buckets, events and sum under H0, `r` replicates at a time."""

    def __init__(
        self,
        side: HistogramSide,
        pooled: Array,
        clear: Array,
        mean: float,
        rng: np.random.Generator,
    ) -> None:
        self.side = side
        self.pooled = pooled
        self.clear = clear
        self.mean = mean
        self.rng = rng
        self.n = max(round(side.events), 0)
        self.mids = bucket_midpoints(side.uppers)
        self.widths = _widths(side.uppers, self.mids)

    def draw(self, r: int) -> tuple[Array, Array, Array]:
        side, rng = self.side, self.rng
        counts = rng.multinomial(self.n, self.pooled, size=r).astype(np.float64)
        shared = np.stack([draw_noise(t, r, rng) for t in side.shared_terms], axis=-1)
        own = np.stack([draw_noise(t, r, rng) for t in side.own_terms], axis=-1)
        buckets = counts + shared + own
        events = self.n + shared.sum(axis=-1) + draw_noise(side.events_terms, r, rng)
        # The sum's sampling noise: which of the clear buckets the events fell in (at
        # their midpoints) plus their spread within a bucket (uniform). Drawn apart from
        # the buckets' draws above: where sampling matters at all, DP noise dominates.
        clear_counts = rng.multinomial(self.n, self.clear, size=r).astype(np.float64)
        between = (clear_counts - self.n * self.clear) @ self.mids
        within_sd = math.sqrt(self.n * float(self.clear @ (self.widths**2 / 12.0)))
        total = (
            self.n * self.mean
            + between
            + rng.normal(0.0, within_sd, r)
            + draw_noise(side.total_terms, r, rng)
        )
        return buckets, events, total


def _pooled_shares(a: HistogramSide, b: HistogramSide, z: float | None) -> Array:
    """The shared distribution under H0: the pooled buckets as shares.

    With `z`, only the buckets that stand clear of their noise (above z standard
    deviations); without, every bucket clipped at zero (the most likely non-negative
    counts under symmetric noise). The buckets' multinomial draws use the clipped ones:
    read as empty, a tail bucket that holds events would make the simulated tails
    emptier than the observed ones. The sums' sampling noise uses the clear ones: a
    noise mass kept in an empty bucket far out, as if a few events took a minute, would
    inflate it. With nothing to go on, uniform.
    """
    pooled = a.buckets + b.buckets
    candidates = [pooled]
    if z is not None:
        sd = np.sqrt(a.bucket_sd**2 + b.bucket_sd**2)
        candidates.insert(0, np.where(pooled > z * sd, pooled, 0.0))
    for candidate in candidates:
        out = shares(candidate)
        if not np.isnan(out).any():
            return out
    return np.full(len(a.uppers), 1.0 / len(a.uppers))


def _clearly_positive(value: float | None, sd: float, z: float) -> bool:
    return value is not None and value > z * sd


def noise_aware_test(
    a: HistogramSide,
    b: HistogramSide,
    positions: npt.ArrayLike,
    *,
    alpha: float,
    replicates: int,
    rng: np.random.Generator,
) -> NullTest:
    """Compare `a` and `b` on every statistic against its simulated null distribution."""
    if a.uppers != b.uppers:
        raise ValueError("the two sides have different buckets")
    pos = np.asarray(positions, dtype=np.float64)
    z = NormalDist().inv_cdf(1.0 - alpha)
    notes: list[str] = []
    swamped = [side.events <= 0.0 or float(side.bucket_sd.sum()) >= side.events for side in (a, b)]
    if any(swamped):
        notes.append("bucket noise at least the events on a side: distances not estimable")
    means_ok = all(
        _clearly_positive(s.events, s.events_sd, z) and _clearly_positive(s.total, s.total_sd, z)
        for s in (a, b)
    )
    if not means_ok:
        notes.append("events or sum not clearly above zero on a side: mean not estimable")
    estimable = np.asarray([not any(swamped)] * len(STATISTICS) + [means_ok])

    pooled = _pooled_shares(a, b, None)
    clear = _pooled_shares(a, b, z)
    mean_a = mean_b = pooled_mean = math.nan
    if means_ok and a.total is not None and b.total is not None:
        mean_a, mean_b = a.total / a.events, b.total / b.events
        pooled_mean = (a.total + b.total) / (a.events + b.events)
    observed = np.concatenate(
        [
            distances(a.buckets, b.buckets, pos),
            _mean_shift(
                np.asarray([a.total or 0.0]),
                np.asarray([a.events]),
                np.asarray([b.total or 0.0]),
                np.asarray([b.events]),
            ),
        ]
    )
    observed = np.where(estimable, observed, np.nan)

    mean = pooled_mean if math.isfinite(pooled_mean) else 0.0
    buckets_a, events_a, total_a = _Replicates(a, pooled, clear, mean, rng).draw(replicates)
    buckets_b, events_b, total_b = _Replicates(b, pooled, clear, mean, rng).draw(replicates)
    null = np.concatenate(
        [
            distances(buckets_a, buckets_b, pos),
            _mean_shift(total_a, events_a, total_b, events_b)[:, None],
        ],
        axis=-1,
    )
    # A replicate whose histogram has nothing above zero has no distance: it counts as
    # at least as far apart as any observation (conservative).
    null = np.where(np.isnan(null), np.inf, null)
    # The replicate at the quantile itself (no interpolation: replicates can be inf).
    thresholds = np.quantile(null, 1.0 - alpha, axis=0, method="higher")
    p_values = _p_values(observed, null)
    family_p = _family_p(p_values, null, estimable)
    return NullTest(
        values=tuple(float(v) for v in observed),
        thresholds=tuple(
            float(t) if e else math.nan for t, e in zip(thresholds, estimable, strict=True)
        ),
        p_values=tuple(float(p) for p in p_values),
        estimable=tuple(bool(e) for e in estimable),
        family_p=family_p,
        mean_a=mean_a,
        mean_b=mean_b,
        replicates=replicates,
        notes=tuple(notes),
    )


def _family_p(p_values: Array, null: Array, estimable: npt.NDArray[np.bool_]) -> float:
    """Westfall-Young min-p over the estimable statistics, on the same replicates."""
    if not estimable.any():
        return math.nan
    cols = null[:, estimable]
    r = cols.shape[0]
    # Each replicate's own p-value per statistic, against the others: (1 + #{others at
    # or above it}) / r, which is #{replicates at or above it, itself included} / r.
    at_or_above = np.stack(
        [r - np.searchsorted(np.sort(c), c, side="left") for c in cols.T], axis=-1
    )
    null_min_p = (at_or_above / r).min(axis=-1)
    observed_min_p = float(np.nanmin(p_values[estimable]))
    return float((1.0 + (null_min_p <= observed_min_p).sum()) / (1.0 + r))
