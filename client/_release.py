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
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp

from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._errors import ReleaseError
from policies import CounterSignal, HistogramSignal
from schemas import CounterAggregate, HistogramAggregate, Mechanism, NoiseSpec

__all__ = [
    "Release",
    "TrueCounter",
    "TrueHistogram",
    "apportion",
    "counter_measurement",
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
class Release:
    """Released aggregates of one signal, and the truth they were drawn from.

    `truth[i]` is the clamped input of `aggregates[i]`. The truth never leaves the
    device; it exists so tests and simulators can compare releases to what was recorded.
    """

    aggregates: list[CounterAggregate] | list[HistogramAggregate]
    truth: list[TrueCounter] | list[TrueHistogram]


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
    # Two non-negative vectors that each total at most `bound` are at most 2*bound
    # apart in L1: that is the sensitivity in the local model.
    noisy, scale = _release_counts(clamped, 2 * bound, signal.epsilon, mechanism)
    noise = NoiseSpec(
        mechanism=mechanism,
        scale=scale,
        epsilon=signal.epsilon,
        lower=0.0,
        upper=float(bound),
    )
    cells = domain.cells()
    aggregates = [
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
    truth = [
        TrueCounter(signal=name, attributes=attrs, value=value)
        for attrs, value in zip(cells, clamped, strict=True)
    ]
    return Release(aggregates, truth)


def _split_epsilon(signal: HistogramSignal) -> tuple[float, float]:
    """(epsilon for counts, epsilon for sums); their float sum never exceeds epsilon."""
    eps_sum = signal.epsilon * signal.sum_share
    eps_count = signal.epsilon - eps_sum
    while eps_count + eps_sum > signal.epsilon:
        eps_count = math.nextafter(eps_count, 0.0)
    return eps_count, eps_sum


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

    if sum_mechanism is not Mechanism.LAPLACE:
        raise ReleaseError(f"histogram sums are released with laplace, not {sum_mechanism.value}")
    eps_count, eps_sum = _split_epsilon(signal)
    # Non-negative event vectors totalling at most `bound`: L1 diameter 2*bound.
    noisy_counts, count_scale = _release_counts(kept_flat, 2 * bound, eps_count, count_mechanism)
    # Each cell's |sum| is at most (its events) * max|value|, and events total at most
    # `bound`, so the sum vector's L1 norm is at most bound*max|value|: diameter twice that.
    magnitude = max(abs(lo), abs(hi))
    sum_meas, sum_scale = sum_measurement(domain.size, 2.0 * bound * magnitude, eps_sum)

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
        lower=bound * min(lo, 0.0),
        upper=bound * max(hi, 0.0),
    )
    cells = domain.cells()
    aggregates = [
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
    truth = [
        TrueHistogram(signal=name, attributes=attrs, counts=counts[i], sum=sums[i])
        for i, attrs in enumerate(cells)
    ]
    return Release(aggregates, truth)
