"""Secret-share one window of an aggregate-model signal: Prio3 reports, pure logic.

For each of the signal's aggregation tasks (`policies.aggregation_tasks`) the window's
clamped measurement becomes a non-negative integer vector within the task's L1 bound;
Prio3 splits it into a public share, a leader share and a helper share with a validity
proof. The helper share is sealed (NaCl sealed box) to the helper's key together with
the report's identity, so the ingest (the leader) relays it unread. Nothing of the
measurement leaves the device unshared.

Clamping keeps means: when a histogram window holds more events than
`max_events_per_window`, or more seconds than the sum cap, every cell's events and sum
are scaled by the same factor (largest-remainder rounding for counts), so each cell's
mean is what the device saw. Sums are then rounded to the task's units at random
(unbiased: E[round(x)] = x), and the rounding never pushes the vector past its bound.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from nacl.public import PublicKey, SealedBox
from quietwire_prio import Prio3

from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import Release, TrueCounter, TrueHistogram, TrueTotal, Truth, apportion
from policies import AggregationTask, CounterSignal, HistogramSignal, task_context
from schemas import REPORT_ID_BYTES, HelperShareV1, PrioReport

__all__ = [
    "ClampedHistogram",
    "ReportSharer",
    "clamp_histogram",
    "counter_measurement",
    "histogram_measurements",
    "histogram_totals",
    "quantize_sums",
    "share_counter",
    "share_histogram",
    "task_vdaf",
]


@functools.lru_cache(maxsize=256)
def _vdaf(length: int, bits: int, chunk_length: int) -> Prio3:
    return Prio3.l1_bound_sum(length, bits, chunk_length)


def task_vdaf(task: AggregationTask) -> Prio3:
    """The Prio3L1BoundSum of `task`'s shape, built once per shape. The one place a
    task's VDAF is made: devices, leader, helper and the ingest's checks share it."""
    return _vdaf(task.length, task.bits, task.chunk_length)


@dataclass(frozen=True, slots=True)
class ClampedHistogram:
    """A histogram window after clamping: per-cell bucket counts and sums of values."""

    counts: list[list[int]]
    sums: list[float]


def clamp_histogram(signal: HistogramSignal, raw: Sequence[HistogramSnapshot]) -> ClampedHistogram:
    """Scale a window down to the per-cell parts' caps, keeping every cell's mean.

    The kept share is f = min(1, cell_events_cap / events, cell_sum_cap / sum): the
    events are apportioned to floor(f x events) and each cell's sum is scaled by the
    share of its own events kept, so sum / count per cell is unchanged (up to one
    event's rounding).
    """
    flat = [c for snap in raw for c in snap.counts]
    events = sum(flat)
    total = math.fsum(max(snap.total, 0.0) for snap in raw)
    events_cap, sum_cap = signal.cell_events_cap, signal.cell_sum_cap
    keep = 1.0
    if events > events_cap:
        keep = events_cap / events
    if total > sum_cap:
        keep = min(keep, sum_cap / total)
    n_buckets = len(signal.buckets) + 1
    kept_flat = apportion(flat, math.floor(events * keep)) if keep < 1.0 else flat
    counts = [kept_flat[i * n_buckets : (i + 1) * n_buckets] for i in range(len(raw))]
    sums = []
    for snap, kept in zip(raw, counts, strict=True):
        n_raw, n_kept = sum(snap.counts), sum(kept)
        sums.append(max(snap.total, 0.0) * n_kept / n_raw if n_raw else 0.0)
    magnitude = math.fsum(sums)
    if magnitude > sum_cap:  # float drift or a cell that kept its events whole
        sums = [x * sum_cap / magnitude for x in sums]
    return ClampedHistogram(counts, sums)


def histogram_totals(
    signal: HistogramSignal, raw: Sequence[HistogramSnapshot]
) -> tuple[int, float]:
    """The window's events and sum of values over all cells, each clamped to the
    totals' bound (max_events_per_window, the sum cap), not scaled down."""
    events = sum(sum(snap.counts) for snap in raw)
    total = math.fsum(max(snap.total, 0.0) for snap in raw)
    return min(events, signal.max_events_per_window), min(total, signal.sum_cap)


def quantize_sums(sums: Sequence[float], resolution: float, bound: int) -> list[int]:
    """Non-negative sums to integer units, rounded at random (unbiased), L1 <= bound."""
    out = []
    for x in sums:
        units = max(x, 0.0) / resolution
        whole = math.floor(units)
        # secrets: the rounding must not be predictable from a seeded PRNG either.
        up = secrets.randbelow(1 << 53) < (units - whole) * (1 << 53)
        out.append(whole + int(up))
    excess = sum(out) - bound
    while excess > 0:  # rounding up can overshoot by at most one unit per cell
        i = max(range(len(out)), key=lambda j: out[j])
        take = min(excess, out[i])
        out[i] -= take
        excess -= take
    return out


def counter_measurement(signal: CounterSignal, raw: Sequence[int]) -> list[int]:
    """A counter window clamped to its L1 bound (largest remainder keeps proportions)."""
    return apportion([max(v, 0) for v in raw], signal.max_per_window)


def histogram_measurements(
    tasks: Sequence[AggregationTask], clamped: ClampedHistogram, totals: tuple[int, float]
) -> dict[str, list[int]]:
    """The vector of each of a histogram's tasks by task id: buckets, counts and sums
    from the scaled-down cells, total_events and total_sum from `histogram_totals`."""
    out: dict[str, list[int]] = {}
    for task in tasks:
        if task.part == "buckets":
            out[task.id] = [c for cell in clamped.counts for c in cell]
        elif task.part == "counts":
            out[task.id] = [sum(cell) for cell in clamped.counts]
        elif task.part == "sums":
            out[task.id] = quantize_sums(clamped.sums, task.resolution, task.bound)
        elif task.part == "total_events":
            out[task.id] = [totals[0]]
        elif task.part == "total_sum":
            out[task.id] = quantize_sums([totals[1]], task.resolution, task.bound)
    return out


class ReportSharer:
    """Shards measurements into `PrioReport`s for one policy and one helper key."""

    __slots__ = ("_box", "_policy_hash")

    def __init__(self, policy_hash: str, helper_public_key: bytes) -> None:
        self._policy_hash = policy_hash
        self._box = SealedBox(PublicKey(helper_public_key))

    def report(
        self, task: AggregationTask, measurement: Sequence[int], batch_start: datetime
    ) -> PrioReport:
        """One report of `measurement` (a vector within `task`'s bound) for a batch."""
        vdaf = task_vdaf(task)
        report_id = secrets.token_bytes(REPORT_ID_BYTES)
        ctx = task_context(self._policy_hash, task.id)
        shares = vdaf.shard(ctx, list(measurement), report_id)
        return self.wrap(task, report_id, shares, batch_start)

    def wrap(
        self,
        task: AggregationTask,
        report_id: bytes,
        shares: tuple[bytes, bytes, bytes],
        batch_start: datetime,
    ) -> PrioReport:
        """The report of sharded (public, leader, helper) shares: the helper's share
        sealed to the helper with the report's identity."""
        public, leader, helper = shares
        sealed = self._box.encrypt(
            HelperShareV1(
                policy_hash=self._policy_hash,
                task=task.id,
                report_id=report_id,
                window_start=batch_start,
                share=helper,
            )
            .model_dump_json()
            .encode()
        )
        return PrioReport(
            task=task.id,
            tier=task.tier,
            report_id=report_id,
            public_share=public,
            leader_share=leader,
            helper_share=bytes(sealed),
        )


def share_counter(
    name: str,
    signal: CounterSignal,
    domain: CellDomain,
    raw: Sequence[int],
    tasks: Sequence[AggregationTask],
    sharer: ReportSharer,
    batch_start: datetime,
) -> Release:
    """One counter window as Prio3 reports (cells, total), with its clamped truth."""
    clamped = counter_measurement(signal, raw)
    vectors = {"cells": clamped, "total": [sum(clamped)]}
    truth: list[Truth] = [
        TrueCounter(signal=name, attributes=attrs, value=value)
        for attrs, value in zip(domain.cells(), clamped, strict=True)
    ]
    if any(t.part == "total" for t in tasks):
        truth.append(TrueTotal(signal=name, measure="count", value=float(sum(clamped))))
    reports = [sharer.report(t, vectors[t.part], batch_start) for t in tasks]
    return Release([], truth, reports)


def share_histogram(
    name: str,
    signal: HistogramSignal,
    domain: CellDomain,
    raw: Sequence[HistogramSnapshot],
    tasks: Sequence[AggregationTask],
    sharer: ReportSharer,
    batch_start: datetime,
) -> Release:
    """One histogram window as Prio3 reports (its parts), with its clamped truth."""
    clamped = clamp_histogram(signal, raw)
    totals = histogram_totals(signal, raw)
    vectors = histogram_measurements(tasks, clamped, totals)
    truth: list[Truth] = [
        TrueHistogram(signal=name, attributes=attrs, counts=counts, sum=total)
        for attrs, counts, total in zip(domain.cells(), clamped.counts, clamped.sums, strict=True)
    ]
    parts = {t.part for t in tasks}
    if "total_events" in parts:
        truth.append(TrueTotal(signal=name, measure="count", value=float(totals[0])))
    if "total_sum" in parts:
        truth.append(TrueTotal(signal=name, measure="sum", value=totals[1]))
    reports = [sharer.report(task, vectors[task.id], batch_start) for task in tasks]
    return Release([], truth, reports)
