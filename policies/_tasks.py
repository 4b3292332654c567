"""Prio3 aggregation tasks derived from a policy: what one device report of a part holds.

Pure functions on the policy. Every `aggregate` signal becomes one or more *tasks*
(DAP's word): one Prio3L1BoundSum each, a non-negative integer vector whose entries sum
to at most `bound` = 2**bits - 1, which the report's validity proof enforces exactly.

- counter `cells`: one entry per attribute cell, the window's count (L1 <= max_per_window);
- counter `total`: one entry, the window's clamped count over all cells (<= max_per_window):
  a fleet total with two noise draws instead of two per cell;
- histogram `buckets`: one entry per (cell, bucket), cell-major (L1 <= cell_max_events);
- histogram `counts`: one entry per cell, its number of events (L1 <= cell_max_events):
  the denominator of a mean, with two noise draws instead of one per bucket;
- histogram `sums`: one entry per cell, its sum of values in units of `resolution`
  (L1 <= 2**sum_bits - 1 units = the signal's cell sum cap);
- histogram `total_events` and `total_sum`: one entry each, the window's events (<=
  max_events_per_window) and sum of values (<= the sum cap) over all cells, clamped but
  not scaled down: the fleet totals, unbiased for any device under those bounds.

The per-cell parts scale a heavy window down as a whole (keeping each cell's mean), so
their bounds can sit near a typical window; the totals' bounds sit above a heavy one.

Privacy unit: one device's report for one window (replace-one neighbours, so the number
of reports in a batch is public). Two vectors of two or more entries (non-negative, L1
<= bound) differ by at most 2 x bound in L1 (all of one in one entry, all of the other
in another); two one-entry vectors (a total part, or any part of a signal without
attributes), each in [0, bound], by at most bound, as under add/remove neighbours (a
report joins or leaves the sum). Each aggregator adds discrete Laplace noise at that
sensitivity and the part's epsilon, so the revealed sum is epsilon-DP even if the other
aggregator adds none. A signal's epsilon is split between its parts (basic composition)
as its `parts` say (`CounterSignal.part_epsilons`, `HistogramSignal.part_epsilons`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from policies._model import OTHER, CounterSignal, HistogramSignal, Policy
from schemas import Tier

__all__ = [
    "SCALAR_PARTS",
    "AggregationTask",
    "TaskPart",
    "aggregation_tasks",
    "cell_labels",
    "task_context",
]

TaskPart = Literal["cells", "total", "buckets", "counts", "sums", "total_events", "total_sum"]
SCALAR_PARTS: frozenset[str] = frozenset({"total", "total_events", "total_sum"})
"""Parts whose vector is one entry over all cells (no attributes)."""

_CTX_PREFIX = b"quietwire/prio3/v1/"


def cell_labels(attributes: Mapping[str, list[str]]) -> list[dict[str, str]]:
    """Every attribute cell of a declared domain, in the client's index order.

    Each label's values are the declared ones plus `other`; cells are their cross
    product, first declared label most significant (as `client.CellDomain` indexes).
    """
    labels = list(attributes)
    values = [(*attributes[label], OTHER) for label in labels]
    return [dict(zip(labels, combo, strict=True)) for combo in itertools.product(*values)]


@dataclass(frozen=True, slots=True)
class AggregationTask:
    """One Prio3L1BoundSum task: a part of one aggregate signal, per window."""

    signal: str
    part: TaskPart
    tier: Tier
    unit: str
    length: int
    bits: int
    resolution: float
    """Value of one unit of the vector (1 for counts; sum cap / bound for sums)."""
    epsilon: float
    min_batch_size: int

    @property
    def id(self) -> str:
        """`signal/part`: unique within a policy."""
        return f"{self.signal}/{self.part}"

    @property
    def bound(self) -> int:
        """The L1 bound the proof enforces, in units: 2**bits - 1."""
        return (1 << self.bits) - 1

    @property
    def sensitivity(self) -> int:
        """The largest L1 distance between two devices' reports (replace-one), in units.

        The L1 diameter of the non-negative integer vectors with L1 <= bound: 2 x bound
        for two or more entries (all in one entry against all in another), bound for
        one (a scalar total, or the parts of a signal without attributes).
        """
        return self.bound if self.length == 1 else 2 * self.bound

    @property
    def chunk_length(self) -> int:
        """Prio3's gadget chunk: about the square root of the encoded length."""
        return max(1, math.isqrt(self.length * self.bits + self.bits))


def task_context(policy_hash: str, task_id: str) -> bytes:
    """The VDAF application context: binds a report to one policy's task."""
    return _CTX_PREFIX + policy_hash.encode("ascii") + b"/" + task_id.encode("ascii")


def _signal_tasks(
    name: str, signal: CounterSignal | HistogramSignal, policy: Policy
) -> list[AggregationTask]:
    cells = len(cell_labels(signal.attributes))

    def task(
        part: TaskPart, unit: str, length: int, bits: int, resolution: float
    ) -> AggregationTask:
        return AggregationTask(
            signal=name,
            part=part,
            tier=signal.tier,
            unit=unit,
            length=length,
            bits=bits,
            resolution=resolution,
            epsilon=epsilons[part],
            min_batch_size=policy.aggregation.min_batch_size,
        )

    epsilons = signal.part_epsilons()
    if isinstance(signal, CounterSignal):
        bits = signal.max_per_window.bit_length()
        shapes: dict[str, tuple[TaskPart, str, int, int, float]] = {
            "cells": ("cells", signal.unit, cells, bits, 1.0),
            "total": ("total", signal.unit, 1, bits, 1.0),
        }
    else:
        sum_bits = policy.aggregation.sum_bits
        units = (1 << sum_bits) - 1
        cell_bits = signal.cell_events_cap.bit_length()
        n_buckets = len(signal.buckets) + 1
        shapes = {
            "buckets": ("buckets", "1", cells * n_buckets, cell_bits, 1.0),
            "counts": ("counts", "1", cells, cell_bits, 1.0),
            "sums": ("sums", signal.unit, cells, sum_bits, signal.cell_sum_cap / units),
            "total_events": (
                "total_events",
                "1",
                1,
                signal.max_events_per_window.bit_length(),
                1.0,
            ),
            "total_sum": ("total_sum", signal.unit, 1, sum_bits, signal.sum_cap / units),
        }
    return [task(*shapes[part]) for part in shapes if part in epsilons]


def aggregation_tasks(policy: Policy) -> dict[str, AggregationTask]:
    """Every task of the policy's aggregate signals, by task id (sorted)."""
    out: dict[str, AggregationTask] = {}
    for name in policy.aggregate_signals:
        for task in _signal_tasks(name, policy.signals[name], policy):
            out[task.id] = task
    return out
