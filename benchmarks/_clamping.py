"""The client's clamping of a histogram window, ported to numpy for many devices at once.

`clamp_aggregate` is `client._shares.clamp_histogram` (the per-cell parts, scaled down
as a whole at the cell caps), `clamp_totals` `client._shares.histogram_totals` (the
total_events and total_sum parts, clamped at the totals' bounds, not scaled down),
`clamp_local` the clamping in `client._release.release_histogram`, `quantize`
`client._shares.quantize_sums`, operation for operation on each row (one device's
window), so that a bulk simulation can clamp the fifth of a fleet's days that exceed a
bound. `benchmarks._client_check` compares them with the client's functions on every
device of a 1,000-device day.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks._types import FloatArray, IntArray
from policies import AggregationTask, HistogramSignal

__all__ = [
    "apportion_rows",
    "cell_counts",
    "clamp_aggregate",
    "clamp_local",
    "clamp_totals",
    "quantize",
]


def apportion_rows(values: IntArray, caps: IntArray) -> IntArray:
    """`client._release.apportion` on each row: largest remainder, lowest index on ties."""
    total = values.sum(axis=1)
    out = values.copy()
    over = total > caps
    if not over.any():
        return out
    v, cap, tot = values[over], caps[over][:, None], total[over][:, None]
    kept = v * cap // tot
    left = cap[:, 0] - kept.sum(axis=1)
    order = np.argsort(-(v * cap % tot), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(v.shape[1]), v.shape), axis=1)
    out[over] = kept + (rank < left[:, None])
    return out


def _row_fsum(a: FloatArray) -> FloatArray:
    # math.fsum per row, as the client sums (exactly rounded, order-independent).
    return np.array([math.fsum(row) for row in a.tolist()])


def cell_counts(flat: IntArray, cells: int) -> IntArray:
    out: IntArray = flat.reshape(len(flat), cells, -1).sum(axis=2)
    return out


def clamp_aggregate(
    signal: HistogramSignal, flat: IntArray, totals: FloatArray
) -> tuple[IntArray, FloatArray]:
    """`client._shares.clamp_histogram` on each row: (bucket counts, per-cell sums),
    scaled down as a whole to the cell caps (`cell_events_cap`, `cell_sum_cap`)."""
    cells, events_cap, cap = totals.shape[1], signal.cell_events_cap, signal.cell_sum_cap
    events = flat.sum(axis=1)
    total = _row_fsum(np.maximum(totals, 0.0))
    keep = np.ones(len(flat))
    over_n = events > events_cap
    keep[over_n] = events_cap / events[over_n]
    over_s = total > cap
    keep[over_s] = np.minimum(keep[over_s], cap / total[over_s])
    scaled = keep < 1.0
    counts = flat.copy()
    target = np.floor(events * keep).astype(np.int64)
    counts[scaled] = apportion_rows(flat[scaled], target[scaled])
    n_raw, n_kept = cell_counts(flat, cells), cell_counts(counts, cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        sums = np.where(n_raw > 0, np.maximum(totals, 0.0) * n_kept / n_raw, 0.0)
    magnitude = _row_fsum(sums)
    big = magnitude > cap
    sums[big] = sums[big] * cap / magnitude[big][:, None]
    return counts, sums


def clamp_totals(
    signal: HistogramSignal, events: IntArray, sums: FloatArray
) -> tuple[IntArray, FloatArray]:
    """`client._shares.histogram_totals` on each row of per-cell events and sums: (the
    window's events, its sum of values), each clamped at the totals' bound
    (`max_events_per_window`, `sum_cap`), not scaled down."""
    n: IntArray = np.minimum(events.sum(axis=1), signal.max_events_per_window)
    total: FloatArray = np.minimum(_row_fsum(np.maximum(sums, 0.0)), signal.sum_cap)
    return n, total


def clamp_local(
    signal: HistogramSignal, flat: IntArray, totals: FloatArray
) -> tuple[IntArray, FloatArray]:
    """The clamping in `client._release.release_histogram` on each row (local model):
    events apportioned to the event cap; sums scaled to the sum cap (counts are not)."""
    cells, cap = totals.shape[1], signal.sum_cap
    lo, hi = signal.value_range
    counts = apportion_rows(flat, np.full(len(flat), signal.max_events_per_window))
    n_raw, n_kept = cell_counts(flat, cells), cell_counts(counts, cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(n_raw > 0, totals * n_kept / n_raw, 0.0)
    sums = np.minimum(np.maximum(scaled, n_kept * lo), n_kept * hi)
    magnitude = _row_fsum(np.abs(sums))
    big = magnitude > cap
    sums[big] = sums[big] * cap / magnitude[big][:, None]
    return counts, sums


def quantize(sums: FloatArray, task: AggregationTask, rng: np.random.Generator) -> IntArray:
    """`client._shares.quantize_sums` on each row (numpy's generator for `secrets`: the
    same unbiased rounding, and the same excess removal from the largest cell)."""
    units = np.maximum(sums, 0.0) / task.resolution
    whole = np.floor(units)
    out = (whole + (rng.random(units.shape) < units - whole)).astype(np.int64)
    excess = out.sum(axis=1) - task.bound
    rows = np.flatnonzero(excess > 0)
    while rows.size:
        i = out[rows].argmax(axis=1)
        take = np.minimum(excess[rows], out[rows, i])
        out[rows, i] -= take
        excess[rows] -= take
        rows = rows[excess[rows] > 0]
    return out
