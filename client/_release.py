"""Differentially private release of one closed window, through OpenDP only.

Privacy unit: one device's contribution to one window, in the local model: the device
adds noise itself, so any two datasets the device could hold for a window are
neighbours. The sensitivity of a release is therefore the L1 diameter of the set of
clamped inputs the device could release, not the effect of one event.

Counters: the vector of every cell of the signal's declared domain (zeros included:
releasing only non-zero cells would reveal which cells are non-zero) is clamped so its
total is at most `max_per_window`, then released with discrete Laplace noise.
Histograms: per cell, the bucket counts (total events across cells at most
`max_events_per_window`) with discrete Laplace, and the sum of values clamped to
`value_range` with continuous Laplace; `sum_share` of epsilon goes to the sums.

Totals: with `total_share` > 0, that share of epsilon releases one scalar per window
over all cells: a counter's clamped total (in [0, M], so d_in = M, not 2M) and, for a
histogram, its number of events (d_in = N) and its sum of values (in
[N min(lo, 0), N max(hi, 0)], d_in = N (max(hi, 0) - min(lo, 0))). One draw at the
scalar's sensitivity instead of one per cell: fleet totals and fleet means built from
these are far less noisy than sums of the per-cell releases (see docs/privacy.md).

Clamping is deterministic: when a window's total exceeds the bound, each cell keeps
floor(value * bound / total) and the units left over go to the cells with the largest
remainders (lowest index first on ties), so the kept vector keeps the proportions.
A histogram cell's sum is scaled by the share of its events kept, so its mean is kept.

Measurements are built once per (size, sensitivity, epsilon) and cached; the scale is
the smallest for which OpenDP's own privacy map at the sensitivity is at most the
policy's epsilon, and that is checked again with `map` before any use.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import opendp.prelude as dp

from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._errors import ReleaseError
from policies import CounterSignal, HistogramSignal, LocalParts, local_parts
from schemas import (
    CounterAggregate,
    HistogramAggregate,
    Mechanism,
    NoiseSpec,
    PrioReport,
    TotalAggregate,
)

__all__ = [
    "EpsilonSplit",
    "Release",
    "TrueCounter",
    "TrueHistogram",
    "TrueTotal",
    "Truth",
    "apportion",
    "counter_measurement",
    "epsilon_split",
    "release_counter",
    "release_histogram",
    "sum_measurement",
]

dp.enable_features("contrib")


@dataclass(frozen=True, slots=True)
class TrueCounter:
    """The clamped, noise-free value of one released counter cell (simulation only)."""

    signal: str
    attributes: dict[str, str]
    value: int


@dataclass(frozen=True, slots=True)
class TrueHistogram:
    """The clamped, noise-free counts and sum of one histogram cell (simulation only)."""

    signal: str
    attributes: dict[str, str]
    counts: list[int]
    sum: float


@dataclass(frozen=True, slots=True)
class TrueTotal:
    """The clamped, noise-free scalar total of one signal (simulation only)."""

    signal: str
    measure: Literal["count", "sum"]
    value: float


Truth = TrueCounter | TrueHistogram | TrueTotal


@dataclass(frozen=True, slots=True)
class Release:
    """Released aggregates of one signal, and the truth they were drawn from.

    `truth[i]` is the clamped input of `aggregates[i]` (cells first, then totals). The
    truth never leaves the device; it exists so tests and simulators can compare
    releases to what was recorded.
    """

    aggregates: list[CounterAggregate | HistogramAggregate | TotalAggregate]
    truth: list[Truth]
    reports: list[PrioReport] = field(default_factory=list)
    """Prio3 reports, for a signal under the aggregate model (then no aggregates)."""


EpsilonSplit = LocalParts
"""How a signal's per-window epsilon is shared between its releases: the policy's
split (`policies.local_parts`), which also prices the release (`policies._charge`)."""


def epsilon_split(signal: CounterSignal | HistogramSignal) -> EpsilonSplit:
    """The policy's split of `signal.epsilon` (`total_share`, then `sum_share`)."""
    return local_parts(signal)


def apportion(values: list[int], cap: int) -> list[int]:
    """Scale non-negative integers down so they total at most `cap` (largest remainder)."""
    total = sum(values)
    if total <= cap:
        return list(values)
    kept = [v * cap // total for v in values]
    left = cap - sum(kept)
    by_remainder = sorted(range(len(values)), key=lambda i: (-(values[i] * cap % total), i))
    for i in by_remainder[:left]:
        kept[i] += 1
    return kept


def _smallest_scale(make: Any, d_in: float | int, epsilon: float) -> tuple[Any, float]:
    try:
        scale = float(dp.binary_search_param(make, d_in=d_in, d_out=epsilon))
        meas = make(scale)
        achieved = float(meas.map(d_in))
    except Exception as exc:  # OpenDP raises its own error type
        raise ReleaseError(f"cannot build a measurement for epsilon={epsilon}: {exc}") from exc
    if not achieved <= epsilon:
        raise ReleaseError(f"OpenDP map gives {achieved} > epsilon {epsilon} at d_in={d_in}")
    return meas, scale


@functools.lru_cache(maxsize=256)
def counter_measurement(size: int, d_in: int, epsilon: float) -> tuple[Any, float]:
    """Discrete Laplace on an integer vector of `size`; returns (measurement, scale)."""
    space = dp.vector_domain(dp.atom_domain(T="i64"), size=size), dp.l1_distance(T="i64")
    return _smallest_scale(lambda s: dp.m.make_laplace(*space, scale=s), d_in, epsilon)


@functools.lru_cache(maxsize=256)
def sum_measurement(size: int, d_in: float, epsilon: float) -> tuple[Any, float]:
    """Continuous Laplace on a float vector of `size`; returns (measurement, scale)."""
    space = (
        dp.vector_domain(dp.atom_domain(T=float, nan=False), size=size),
        dp.l1_distance(T=float),
    )
    return _smallest_scale(lambda s: dp.m.make_laplace(*space, scale=s), d_in, epsilon)


def _release_counts(
    values: list[int], d_in: int, epsilon: float, mechanism: Mechanism
) -> tuple[list[float], float]:
    """Noisy counts with the policy's mechanism; returns (values, scale)."""
    if mechanism is Mechanism.DISCRETE_LAPLACE:
        meas, scale = counter_measurement(len(values), d_in, epsilon)
        return [float(v) for v in meas(values)], scale
    if mechanism is Mechanism.LAPLACE:
        meas, scale = sum_measurement(len(values), float(d_in), epsilon)
        return [float(v) for v in meas([float(v) for v in values])], scale
    raise ReleaseError(f"{mechanism.value} is not a pure-DP mechanism this client implements")


def release_counter(
    name: str,
    signal: CounterSignal,
    domain: CellDomain,
    raw: list[int],
    mechanism: Mechanism = Mechanism.DISCRETE_LAPLACE,
) -> Release:
    """Clamp and release every cell of one counter signal for one window."""
    bound = signal.max_per_window
    clamped = apportion(raw, bound)
    split = epsilon_split(signal)
    # Two non-negative vectors that each total at most `bound` are at most 2*bound
    # apart in L1: that is the sensitivity in the local model.
    noisy, scale = _release_counts(clamped, 2 * bound, split.cells, mechanism)
    noise = NoiseSpec(
        mechanism=mechanism,
        scale=scale,
        epsilon=split.cells,
        lower=0.0,
        upper=float(bound),
    )
    cells = domain.cells()
    aggregates: list[CounterAggregate | HistogramAggregate | TotalAggregate] = [
        CounterAggregate(
            signal=name,
            tier=signal.tier,
            unit=signal.unit,
            attributes=attrs,
            value=value,
            noise=noise,
        )
        for attrs, value in zip(cells, noisy, strict=True)
    ]
    truth: list[Truth] = [
        TrueCounter(signal=name, attributes=attrs, value=value)
        for attrs, value in zip(cells, clamped, strict=True)
    ]
    if split.total > 0.0:
        # The total is in [0, bound]: a scalar whose L1 diameter is `bound`.
        total = sum(clamped)
        (value,), t_scale = _release_counts([total], bound, split.total, mechanism)
        t_noise = NoiseSpec(
            mechanism=mechanism, scale=t_scale, epsilon=split.total, lower=0.0, upper=bound
        )
        aggregates.append(_total(name, signal, "count", value, t_noise))
        truth.append(TrueTotal(signal=name, measure="count", value=float(total)))
    return Release(aggregates, truth)


def _total(
    name: str,
    signal: CounterSignal | HistogramSignal,
    measure: Literal["count", "sum"],
    value: float,
    noise: NoiseSpec,
) -> TotalAggregate:
    return TotalAggregate(
        signal=name, tier=signal.tier, unit=signal.unit, measure=measure, value=value, noise=noise
    )


def release_histogram(
    name: str,
    signal: HistogramSignal,
    domain: CellDomain,
    raw: list[HistogramSnapshot],
    count_mechanism: Mechanism = Mechanism.DISCRETE_LAPLACE,
    sum_mechanism: Mechanism = Mechanism.LAPLACE,
) -> Release:
    """Clamp and release the bucket counts and sums of every cell of one histogram."""
    n_buckets = len(signal.buckets) + 1
    bound = signal.max_events_per_window
    lo, hi = signal.value_range
    flat = [c for snap in raw for c in snap.counts]
    kept_flat = apportion(flat, bound)
    counts = [kept_flat[i * n_buckets : (i + 1) * n_buckets] for i in range(domain.size)]
    sums = []
    for snap, kept in zip(raw, counts, strict=True):
        n_raw, n_kept = sum(snap.counts), sum(kept)
        scaled = snap.total * n_kept / n_raw if n_raw else 0.0
        # Guard against float drift: a cell's sum stays within n_kept clamped values.
        sums.append(min(max(scaled, n_kept * lo), n_kept * hi))
    cap = signal.sum_cap
    magnitude = math.fsum(abs(x) for x in sums)
    if magnitude > cap:
        # The device's sums exceed the policy's cap: scale every cell down alike, so the
        # sum vector's L1 norm is at most `cap` and cells keep their proportions.
        sums = [x * cap / magnitude for x in sums]

    if sum_mechanism is not Mechanism.LAPLACE:
        raise ReleaseError(f"histogram sums are released with laplace, not {sum_mechanism.value}")
    split = epsilon_split(signal)
    eps_count, eps_sum = split.cells, split.sums
    # Non-negative event vectors totalling at most `bound`: L1 diameter 2*bound.
    noisy_counts, count_scale = _release_counts(kept_flat, 2 * bound, eps_count, count_mechanism)
    # The sum vector's L1 norm is at most `cap` (the policy's sum cap, or bound*max|value|
    # when unset: each cell's |sum| is at most its events * max|value|): diameter 2*cap.
    sum_meas, sum_scale = sum_measurement(domain.size, 2.0 * cap, eps_sum)

    noisy_sums = sum_meas(sums)
    count_noise = NoiseSpec(
        mechanism=count_mechanism,
        scale=count_scale,
        epsilon=eps_count,
        lower=0.0,
        upper=float(bound),
    )
    sum_noise = NoiseSpec(
        mechanism=Mechanism.LAPLACE,
        scale=sum_scale,
        epsilon=eps_sum,
        lower=-cap if lo < 0.0 else 0.0,
        upper=cap if hi > 0.0 else 0.0,
    )
    cells = domain.cells()
    aggregates: list[CounterAggregate | HistogramAggregate | TotalAggregate] = [
        HistogramAggregate(
            signal=name,
            tier=signal.tier,
            unit=signal.unit,
            attributes=attrs,
            bounds=list(signal.buckets),
            counts=noisy_counts[i * n_buckets : (i + 1) * n_buckets],
            count_noise=count_noise,
            sum=float(noisy_sums[i]),
            sum_noise=sum_noise,
        )
        for i, attrs in enumerate(cells)
    ]
    truth: list[Truth] = [
        TrueHistogram(signal=name, attributes=attrs, counts=counts[i], sum=sums[i])
        for i, attrs in enumerate(cells)
    ]
    if split.total > 0.0:
        n_events, total_sum = sum(kept_flat), math.fsum(sums)
        (n_noisy,), n_scale = _release_counts([n_events], bound, split.total, count_mechanism)
        low, high = (-cap if lo < 0.0 else 0.0), (cap if hi > 0.0 else 0.0)
        total_sum = min(max(total_sum, low), high)
        s_meas, s_scale = sum_measurement(1, high - low, split.total_sum)
        (s_noisy,) = s_meas([total_sum])
        aggregates += [
            _total(
                name,
                signal,
                "count",
                n_noisy,
                NoiseSpec(
                    mechanism=count_mechanism,
                    scale=n_scale,
                    epsilon=split.total,
                    lower=0.0,
                    upper=float(bound),
                ),
            ),
            _total(
                name,
                signal,
                "sum",
                float(s_noisy),
                NoiseSpec(
                    mechanism=Mechanism.LAPLACE,
                    scale=s_scale,
                    epsilon=split.total_sum,
                    lower=low,
                    upper=high,
                ),
            ),
        ]
        truth += [
            TrueTotal(signal=name, measure="count", value=float(n_events)),
            TrueTotal(signal=name, measure="sum", value=total_sum),
        ]
    return Release(aggregates, truth)
