"""The collector: reveal each closed batch once, as fleet aggregates with their noise.

A batch is *closed* once its window has ended and the grace period for late reports
has passed (or, with `final`, as soon as the caller says no more reports will come).
A closed batch with pending reports waits for them. Then:

- fewer aggregated reports than the task's `min_batch_size`: never revealed; the
  batch is marked `below_minimum` and the decision audited once (reports arriving
  later still count, and may lift it over the minimum);
- otherwise: the leader adds its own noise to its aggregate share and stores the noisy
  share before anything else (status `collecting`: never redrawn, and late reports are
  refused from then on), asks the helper for its noisy share, unshards, and writes one
  `fleet_aggregates` row per vector entry together with status `collected`, in one
  transaction. A collected batch is never collected again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from auditlog import AuditLog, AuditRecord
from ingest._sink import DuckDBSink
from ingest.aggregation._catalog import TaskCatalog
from ingest.aggregation._errors import AggregationRefused, HelperUnavailable
from ingest.aggregation._helper_client import HelperClient
from ingest.aggregation._leader import RunStats
from ingest.aggregation._leader_store import (
    LeaderBatch,
    batches_to_collect,
    insert_fleet_rows,
    leader_batch,
    mark_collected,
    pending_count,
    revealed,
    save_noisy_share,
    set_batch_status,
    transaction,
)
from ingest.aggregation._noise import NoiseSource, add_noise
from ingest.aggregation._vdaf import task_vdaf
from ingest.aggregation._wire import CollectionRequest
from policies import SCALAR_PARTS, AggregationTask, HistogramSignal, Policy, cell_labels

__all__ = ["BatchCollector", "fleet_rows"]

log = logging.getLogger("quietwire.ingest.aggregation")

# The warehouse's kinds, as local releases name them: a scalar total over all cells is
# `total` (a count) or `total_sum` (a histogram's sum of values).
_KINDS = {
    "cells": "counter",
    "total": "total",
    "buckets": "bucket",
    "counts": "count",
    "sums": "sum",
    "total_events": "total",
    "total_sum": "total_sum",
}
DRAWS = 2
"""Independent noise draws in each revealed entry: one per aggregator."""


def fleet_rows(
    batch: LeaderBatch,
    policy: Policy,
    task: AggregationTask,
    units: Sequence[int],
    scale: float,
    collected_at: datetime,
) -> list[tuple[Any, ...]]:
    """The `fleet_aggregates` rows of a collected batch: one per vector entry.

    `units` is the unsharded noisy sum; values are in the signal's unit (units x
    resolution). A `buckets` entry i is (cell, bucket) = divmod(i, len(buckets) + 1);
    the last bucket of a cell is the overflow, with no upper bound.
    """
    key = batch.key
    signal = policy.signals[task.signal]
    # A scalar part is over all cells: it carries no attributes.
    cells = [{}] if task.part in SCALAR_PARTS else cell_labels(signal.attributes)
    uppers: list[float | None] = []
    if task.part == "buckets":
        assert isinstance(signal, HistogramSignal)
        uppers = [*signal.buckets, None]
    window_end = key.batch_start + timedelta(seconds=policy.window_seconds)
    rows: list[tuple[Any, ...]] = []
    for index, value in enumerate(units):
        bucket_index: int | None = None
        bucket_upper: float | None = None
        cell = index
        if uppers:
            cell, bucket_index = divmod(index, len(uppers))
            bucket_upper = uppers[bucket_index]
        rows.append(
            (
                key.batch_id,
                index,
                task.id,
                key.policy_hash,
                key.region,
                key.batch_start,
                window_end,
                task.signal,
                task.tier.value,
                task.unit,
                _KINDS[task.part],
                json.dumps(cells[cell], sort_keys=True, separators=(",", ":")),
                bucket_index,
                bucket_upper,
                value * task.resolution,
                batch.reports,
                "discrete_laplace",
                scale,
                DRAWS,
                task.resolution,
                task.epsilon,
                0.0,
                task.bound * task.resolution,
                collected_at,
            )
        )
    return rows


class BatchCollector:
    """Collects closed batches with the helper into `fleet_aggregates`."""

    def __init__(
        self,
        sink: DuckDBSink,
        helper: HelperClient,
        catalog: TaskCatalog,
        noise: NoiseSource,
        *,
        audit: AuditLog | None = None,
        grace: timedelta = timedelta(hours=1),
    ) -> None:
        self._sink = sink
        self._helper = helper
        self._catalog = catalog
        self._noise = noise
        self._audit = audit
        self._grace = grace

    def run(self, now: datetime, stats: RunStats, *, final: bool = False) -> None:
        """Collect every closed batch that can be; raises `HelperUnavailable`."""
        with self._sink.locked() as conn:
            batches = batches_to_collect(conn)
        for batch in batches:
            policy = self._catalog.policy(batch.key.policy_hash)
            task = self._catalog.task(batch.key.policy_hash, batch.key.task)
            if policy is None or task is None:
                continue  # the aggregation step logs these
            closes = batch.key.batch_start + timedelta(seconds=policy.window_seconds)
            if not final and now < closes + self._grace:
                continue
            with self._sink.locked() as conn:
                waiting = pending_count(conn, batch.key)
            if waiting:
                stats.batches_waiting += 1
                continue
            if batch.reports < task.min_batch_size:
                self._below_minimum(batch, task, stats)
                continue
            self._collect(batch, policy, task, now, stats)

    def _below_minimum(self, batch: LeaderBatch, task: AggregationTask, stats: RunStats) -> None:
        stats.batches_below_minimum += 1
        if batch.status == "below_minimum":
            return  # decided and audited before; still waiting for late reports
        with self._sink.locked() as conn:
            set_batch_status(conn, batch.key, "below_minimum")
        self._audit_append(
            AuditRecord(
                "batch_collection",
                "rejected",
                reason="batch_too_small",
                detail=json.dumps(
                    {
                        "batch": batch.key.batch_id,
                        "reports": batch.reports,
                        "min_batch_size": task.min_batch_size,
                    },
                    sort_keys=True,
                ),
            )
        )
        log.info(
            "batch %s: %d reports, below the minimum %d: not revealed",
            batch.key.batch_id,
            batch.reports,
            task.min_batch_size,
        )

    def _collect(
        self,
        batch: LeaderBatch,
        policy: Policy,
        task: AggregationTask,
        now: datetime,
        stats: RunStats,
    ) -> None:
        key = batch.key
        vdaf = task_vdaf(task)
        if batch.noisy_share is None:
            draw = self._noise.draw(task)
            noisy = add_noise(vdaf, batch.aggregate_share, draw)
            with self._sink.locked() as conn, transaction(conn):
                save_noisy_share(conn, key, noisy, draw.scale)
                stored = leader_batch(conn, key)
            assert stored is not None
            batch = stored  # whatever is stored is what is used, never a second draw
        assert batch.noisy_share is not None
        assert batch.noise_scale is not None
        request = CollectionRequest(
            policy_hash=key.policy_hash,
            task=key.task,
            region=key.region,
            batch_start=key.batch_start,
            report_count=batch.reports,
            checksum=batch.checksum,
        )
        try:
            answer = self._helper.collect(request)
        except AggregationRefused as exc:
            if exc.status_code == 401:
                raise HelperUnavailable(f"the helper refuses the leader's token: {exc}") from exc
            stats.collections_refused[exc.reason] += 1
            self._refused(key.batch_id, exc.reason, exc.detail)
            return
        if not math.isclose(answer.noise_scale, batch.noise_scale, rel_tol=1e-9):
            # The stored figures say "two draws at scale s": only true if both agree.
            stats.collections_refused["noise_mismatch"] += 1
            self._refused(
                key.batch_id,
                "noise_mismatch",
                f"helper scale {answer.noise_scale}, leader scale {batch.noise_scale}",
            )
            return
        units = vdaf.unshard(batch.noisy_share, answer.aggregate_share, batch.reports)
        rows = fleet_rows(batch, policy, task, [int(u) for u in units], batch.noise_scale, now)
        with self._sink.locked() as conn, transaction(conn):
            if revealed(conn, key.batch_id):  # belt and braces: rows are never rewritten
                log.error("batch %s already has fleet aggregates; not rewritten", key.batch_id)
            else:
                insert_fleet_rows(conn, rows)
            mark_collected(conn, key, now)
        stats.batches_collected += 1
        self._audit_append(
            AuditRecord(
                "batch_collection",
                "accepted",
                detail=json.dumps(
                    {
                        "batch": key.batch_id,
                        "reports": batch.reports,
                        "entries": len(rows),
                        "scale": batch.noise_scale,
                        "epsilon": task.epsilon,
                    },
                    sort_keys=True,
                ),
            )
        )

    def _refused(self, batch_id: str, reason: str, detail: str) -> None:
        log.error("collection of %s refused (%s): %s", batch_id, reason, detail)
        self._audit_append(
            AuditRecord(
                "batch_collection",
                "rejected",
                reason=reason,
                detail=json.dumps({"batch": batch_id, "detail": detail}, sort_keys=True),
            )
        )

    def _audit_append(self, record: AuditRecord) -> None:
        if self._audit is not None:
            self._audit.append(record)
