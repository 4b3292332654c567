"""The leader's aggregation service: the aggregation step and the collector, together.

`AggregationService.run_once(now)` aggregates what is pending, then collects what is
closed; `run_forever` repeats that until stopped, in a worker thread so an asyncio
service (the sink, the ingest) keeps running. `aggregate_all` is the embedded one-shot
the demo calls after its fleet has sent everything (`final`: every batch is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import duckdb

from auditlog import AuditLog, AuditRecord
from ingest._sink import DuckDBSink
from ingest.aggregation._catalog import TaskCatalog
from ingest.aggregation._collector import BatchCollector
from ingest.aggregation._errors import HelperUnavailable
from ingest.aggregation._helper_client import HelperClient
from ingest.aggregation._leader import LeaderAggregator, RunStats
from ingest.aggregation._leader_store import mark_rejections_audited, unaudited_rejections
from ingest.aggregation._noise import DiscreteLaplaceNoise, NoiseSource
from policies import Policy

__all__ = ["AggregationService", "aggregate_all"]

log = logging.getLogger("quietwire.ingest.aggregation")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AggregationService:
    """Aggregator 0 and the collector over one warehouse and one helper.

    `sink` is the warehouse's `DuckDBSink` (its lock serialises these writes with the
    sink's). `noise` defaults to OpenDP's discrete Laplace; only tests pass another.
    """

    def __init__(
        self,
        sink: DuckDBSink,
        helper: HelperClient,
        catalog: TaskCatalog,
        verify_key: bytes,
        *,
        audit: AuditLog | None = None,
        noise: NoiseSource | None = None,
        max_job_reports: int = 500,
        grace: timedelta = timedelta(hours=1),
    ) -> None:
        self._sink = sink
        self._audit = audit
        self._aggregator = LeaderAggregator(
            sink, helper, catalog, verify_key, audit=audit, max_job_reports=max_job_reports
        )
        self._collector = BatchCollector(
            sink,
            helper,
            catalog,
            noise if noise is not None else DiscreteLaplaceNoise(),
            audit=audit,
            grace=grace,
        )

    def run_once(self, now: datetime, *, final: bool = False) -> RunStats:
        """Aggregate pending reports, then collect closed batches (`final`: all are
        closed). A helper that does not answer ends the run early; nothing is lost."""
        stats = RunStats()
        self._audit_sink_refusals()
        try:
            self._aggregator.run(stats)
            self._collector.run(now, stats, final=final)
        except HelperUnavailable as exc:
            stats.helper_unavailable += 1
            log.warning("helper unavailable; reports stay pending until the next run: %s", exc)
        return stats

    def _audit_sink_refusals(self) -> None:
        """Put the reports the sink refused (replays, second contributions) in the audit
        log, once each: the sink writes the warehouse, the leader owns the audit log."""
        if self._audit is None:
            return
        with self._sink.locked() as conn:
            rows = unaudited_rejections(conn)
        if not rows:
            return
        self._audit.append_many(
            [
                AuditRecord(
                    "prio_report",
                    "rejected",
                    device_id=r.device_id,
                    reason=r.reason,
                    detail=json.dumps(
                        {"task": r.task, "envelope": r.envelope_id, "batch": r.batch_start},
                        sort_keys=True,
                    ),
                )
                for r in rows
            ]
        )
        with self._sink.locked() as conn:
            mark_rejections_audited(conn, rows)

    async def run_forever(
        self,
        stop: asyncio.Event,
        *,
        interval: float,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`run_once` every `interval` seconds (in a worker thread) until `stop` is set."""
        while not stop.is_set():
            stats = await asyncio.to_thread(self.run_once, clock())
            if stats.jobs or stats.batches_collected or stats.helper_unavailable:
                log.info("aggregation run: %s", stats)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


def aggregate_all(
    warehouse: DuckDBSink | duckdb.DuckDBPyConnection,
    helper: HelperClient,
    policies: Sequence[Policy],
    now: datetime,
    *,
    verify_key: bytes,
    audit: AuditLog | None = None,
    final: bool = True,
    max_job_reports: int = 500,
    noise: NoiseSource | None = None,
) -> RunStats:
    """Aggregate every pending report and (with `final`) collect every batch, once.

    For the embedded pipeline: `warehouse` is the ingest's sink (or a connection to
    the warehouse, used under a lock of its own), `helper` a client of a helper that
    serves the same `policies` with the same `verify_key`.
    """
    sink = warehouse if isinstance(warehouse, DuckDBSink) else DuckDBSink(warehouse)
    service = AggregationService(
        sink,
        helper,
        TaskCatalog.from_policies(policies),
        verify_key,
        audit=audit,
        noise=noise,
        max_job_reports=max_job_reports,
    )
    return service.run_once(now, final=final)
