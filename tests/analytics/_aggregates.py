"""Synthetic secure aggregates with known truth: `fleet_aggregates` rows as the collector
writes them, whose noise is drawn from the declared law with OpenDP.

Each entry is the batch's true sum in units plus two independent discrete Laplace draws
at `scale` units (OpenDP's `make_laplace` on an integer vector, once per aggregator),
times `resolution`. Truth is seeded; OpenDP's noise is not.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from tests.analytics._fleet import discrete_laplace

T0 = datetime(2026, 3, 2, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY_HASH = "cd" * 32

_COLUMNS = (
    "batch_id, vector_index, task, policy_hash, region, window_start, window_end, signal, "
    "tier, unit, kind, attributes, bucket_index, bucket_upper, value, reports, mechanism, "
    "scale, draws, resolution, epsilon, lower_bound, upper_bound, collected_at"
)


@dataclass
class Entry:
    """One vector entry of one batch: its cell, its true sum in units."""

    kind: str
    attributes: dict[str, str]
    units: int
    bucket_index: int | None = None
    bucket_upper: float | None = None


@dataclass
class Batch:
    """One task's batch: entries of one kind family, one scale and resolution."""

    signal: str
    part: str
    window: int
    entries: list[Entry]
    scale: float
    resolution: float = 1.0
    reports: int = 500
    region: str = "eu"
    unit: str = "1"
    epsilon: float = 0.5


@dataclass
class AggregateTruth:
    """True values in value units, keyed (signal, window, attributes JSON, kind, bucket)."""

    values: dict[tuple[str, int, str, str, int | None], float] = field(default_factory=dict)

    def of(self, signal: str, window: int, attributes: str, kind: str, bucket: Any) -> float:
        return self.values[(signal, window, attributes, kind, bucket)]


def attrs_json(attributes: dict[str, str]) -> str:
    return json.dumps(attributes, sort_keys=True, separators=(",", ":"))


def noisy_units(units: Sequence[int], scale: float) -> list[int]:
    """The two aggregators' discrete Laplace draws added to the true units."""
    meas = discrete_laplace(scale)
    first = meas([0] * len(units))
    second = meas([0] * len(units))
    return [int(u) + int(a) + int(b) for u, a, b in zip(units, first, second, strict=True)]


def insert_batches(
    conn: duckdb.DuckDBPyConnection, batches: Sequence[Batch], truth: AggregateTruth
) -> None:
    """Write `batches` into `fleet_aggregates` with fresh OpenDP noise; record the truth."""
    rows: list[tuple[Any, ...]] = []
    for batch in batches:
        start = T0 + batch.window * DAY
        noisy = noisy_units([e.units for e in batch.entries], batch.scale)
        batch_id = str(uuid.uuid4())
        for i, (entry, value) in enumerate(zip(batch.entries, noisy, strict=True)):
            key = (
                batch.signal,
                batch.window,
                attrs_json(entry.attributes),
                entry.kind,
                entry.bucket_index,
            )
            truth.values[key] = truth.values.get(key, 0.0) + entry.units * batch.resolution
            rows.append(
                (
                    batch_id,
                    i,
                    f"{batch.signal}/{batch.part}",
                    POLICY_HASH,
                    batch.region,
                    start,
                    start + DAY,
                    batch.signal,
                    "performance",
                    batch.unit,
                    entry.kind,
                    attrs_json(entry.attributes),
                    entry.bucket_index,
                    entry.bucket_upper,
                    value * batch.resolution,
                    batch.reports,
                    "discrete_laplace",
                    batch.scale,
                    2,
                    batch.resolution,
                    batch.epsilon,
                    0.0,
                    1e9,
                    start + DAY,
                )
            )
    names = [c.strip() for c in _COLUMNS.split(",")]
    table = pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
    conn.register("_new_aggregates", table)
    try:
        conn.execute(f"INSERT INTO fleet_aggregates ({_COLUMNS}) SELECT * FROM _new_aggregates")
    finally:
        conn.unregister("_new_aggregates")


def counter_batch(
    signal: str,
    window: int,
    cells: Sequence[dict[str, str]],
    rng: np.random.Generator,
    *,
    scale: float,
    low: int = 0,
    high: int = 5000,
    reports: int = 500,
) -> Batch:
    entries = [Entry("counter", c, int(rng.integers(low, high))) for c in cells]
    return Batch(signal, "cells", window, entries, scale, reports=reports)


def histogram_batches(
    signal: str,
    window: int,
    cells: Sequence[dict[str, str]],
    rng: np.random.Generator,
    *,
    bounds: Sequence[float] = (0.5, 1.0, 2.0),
    count_scale: float = 20.0,
    sum_scale: float = 5000.0,
    resolution: float = 0.01,
    mean: float | Sequence[float] = 1.0,
    events: tuple[int, int] = (500, 3000),
    reports: int = 500,
) -> list[Batch]:
    """The buckets, counts and sums batches of one histogram window.

    Each cell's events are lognormal latencies around its `mean` (one per cell, or one
    for all); its sum is in units of `resolution`, as a client quantises it.
    """
    means = [mean] * len(cells) if isinstance(mean, float | int) else list(mean)
    buckets: list[Entry] = []
    counts: list[Entry] = []
    sums: list[Entry] = []
    edges = np.asarray(bounds)
    for cell, m in zip(cells, means, strict=True):
        n = int(rng.integers(*events))
        values = rng.lognormal(np.log(m) - 0.125, 0.5, size=n)
        per_bucket = np.bincount(np.searchsorted(edges, values), minlength=len(bounds) + 1)
        for i, b in enumerate(per_bucket):
            upper = float(bounds[i]) if i < len(bounds) else None
            buckets.append(Entry("bucket", cell, int(b), i, upper))
        counts.append(Entry("count", cell, n))
        sums.append(Entry("sum", cell, round(float(values.sum()) / resolution)))
    return [
        Batch(signal, "buckets", window, buckets, count_scale, reports=reports),
        Batch(signal, "counts", window, counts, count_scale, reports=reports),
        Batch(signal, "sums", window, sums, sum_scale, resolution, reports=reports, unit="s"),
    ]
