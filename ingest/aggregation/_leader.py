"""The leader's aggregation step: verify pending reports with the helper and sum them.

For each batch with pending reports (oldest first):

1. reports of a policy this leader does not serve stay pending (a configuration gap,
   logged); reports of a task the policy does not define are rejected `unknown_task`;
   reports of a batch already collecting or collected are rejected `batch_collected`;
2. jobs sent before but not finished (a lost answer, a crash) are sent again, with the
   same reports, so the same job id: the helper answers from its store;
3. the remaining reports are taken in jobs of at most `max_job_reports`: Prio3
   verify_init as aggregator 0 (undecodable shares: `report_decode_failed`), the job's
   reports recorded in `prio_job_reports`, then the job is sent;
4. on the helper's answer, verify_next for each continued report; the output shares
   are summed into the batch's aggregate share, and the reports are marked aggregated
   or rejected (with the helper's reason), all in one transaction.

A helper that is down or answers 5xx ends the run: every report stays pending, and the
next run sends the same jobs. Nothing of the crypto or HTTP work holds the warehouse
lock; only reads and the final commit do.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from quietwire_prio import Prio3, Prio3Error

from auditlog import AuditLog, AuditRecord
from ingest._sink import DuckDBSink
from ingest.aggregation._batches import EMPTY_CHECKSUM, BatchKey, batch_checksum, job_id_for
from ingest.aggregation._catalog import TaskCatalog
from ingest.aggregation._errors import AggregationRefused, HelperUnavailable
from ingest.aggregation._helper_client import HelperClient
from ingest.aggregation._leader_store import (
    LeaderBatch,
    PendingReport,
    assign_job,
    leader_batch,
    pending_batches,
    pending_reports,
    save_batch,
    set_outcomes,
    transaction,
)
from ingest.aggregation._vdaf import task_vdaf, task_verify_key
from ingest.aggregation._wire import AggregationJobRequest, ReportInit, ReportReason
from policies import AggregationTask, task_context

__all__ = ["LeaderAggregator", "RunStats"]

log = logging.getLogger("quietwire.ingest.aggregation")

# The helper's refusals of a whole job that are final for its reports.
_FINAL_REFUSALS = frozenset({"unknown_task", "batch_collected", "batch_misaligned"})


@dataclass
class RunStats:
    """What one run of the leader did (aggregation and collection)."""

    jobs: int = 0
    reports_aggregated: int = 0
    reports_rejected: Counter[str] = field(default_factory=Counter)
    reports_skipped: int = 0
    """Pending reports of a policy this leader does not serve (left pending)."""
    helper_unavailable: int = 0
    jobs_refused: Counter[str] = field(default_factory=Counter)
    batches_collected: int = 0
    batches_below_minimum: int = 0
    batches_waiting: int = 0
    """Closed batches not collected yet because some of their reports are pending."""
    collections_refused: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Prepared:
    report: PendingReport
    state: bytes
    verifier_share: bytes


@dataclass(frozen=True, slots=True)
class _Task:
    key: BatchKey
    task: AggregationTask
    vdaf: Prio3
    ctx: bytes
    verify_key: bytes


class LeaderAggregator:
    """Aggregator 0: sends the warehouse's pending reports to the helper and sums them."""

    def __init__(
        self,
        sink: DuckDBSink,
        helper: HelperClient,
        catalog: TaskCatalog,
        verify_key: bytes,
        *,
        audit: AuditLog | None = None,
        max_job_reports: int = 500,
    ) -> None:
        self._sink = sink
        self._helper = helper
        self._catalog = catalog
        self._verify_key = verify_key
        self._audit = audit
        self._max_job_reports = max_job_reports

    def run(self, stats: RunStats) -> None:
        """Aggregate every pending report it can; raises `HelperUnavailable` (reports
        stay pending) when the helper does not answer."""
        with self._sink.locked() as conn:
            keys = pending_batches(conn)
        for key in keys:
            self._batch(key, stats)

    def _batch(self, key: BatchKey, stats: RunStats) -> None:
        task = self._catalog.task(key.policy_hash, key.task)
        if self._catalog.policy(key.policy_hash) is None:
            with self._sink.locked() as conn:
                skipped = len(pending_reports(conn, key, assigned=False))
            stats.reports_skipped += skipped
            log.warning("%d pending reports of unknown policy %s", skipped, key.policy_hash)
            return
        with self._sink.locked() as conn:
            batch = leader_batch(conn, key)
        if task is None or (batch is not None and batch.status in ("collecting", "collected")):
            reason = ReportReason.UNKNOWN_TASK if task is None else ReportReason.BATCH_COLLECTED
            self._reject_pending(key, reason, stats)
            return
        t = _Task(
            key,
            task,
            task_vdaf(task),
            task_context(key.policy_hash, task.id),
            task_verify_key(self._verify_key, key.policy_hash, task.id),
        )
        with self._sink.locked() as conn:
            resend = pending_reports(conn, key, assigned=True)
        by_job: dict[str, list[PendingReport]] = {}
        for r in resend:
            assert r.job_id is not None
            by_job.setdefault(r.job_id, []).append(r)
        for job_id, reports in by_job.items():
            prepared, failed = self._prepare(t, reports)
            if failed:  # verify_init is deterministic: this only follows a key change
                log.error("job %s: %d reports no longer decode", job_id, len(failed))
            if not self._send(t, job_id, prepared, stats):
                return
        while True:
            with self._sink.locked() as conn:
                fresh = pending_reports(conn, key, assigned=False, limit=self._max_job_reports)
            if not fresh:
                return
            prepared, failed = self._prepare(t, fresh)
            job_id = job_id_for(key, [p.report.report_id for p in prepared])
            with self._sink.locked() as conn, transaction(conn):
                if prepared:
                    assign_job(conn, key, job_id, [p.report.report_id for p in prepared])
                set_outcomes(
                    conn, key.task, [], [(r.report_id, str(reason)) for r, reason in failed]
                )
            self._record_rejections(key, failed, stats)
            if prepared and not self._send(t, job_id, prepared, stats):
                return

    def _prepare(
        self, t: _Task, reports: Sequence[PendingReport]
    ) -> tuple[list[_Prepared], list[tuple[PendingReport, ReportReason]]]:
        prepared: list[_Prepared] = []
        failed: list[tuple[PendingReport, ReportReason]] = []
        for r in reports:
            try:
                state, share = t.vdaf.verify_init(
                    t.verify_key, t.ctx, 0, r.report_id, r.public_share, r.leader_share
                )
            except Prio3Error:
                failed.append((r, ReportReason.REPORT_DECODE_FAILED))
                continue
            prepared.append(_Prepared(r, state, share))
        return prepared, failed

    def _send(self, t: _Task, job_id: str, prepared: list[_Prepared], stats: RunStats) -> bool:
        """Run one job with the helper and commit its outcome; False if the helper
        refused the whole job in a way that is not final (the batch waits)."""
        key = t.key
        request = AggregationJobRequest(
            job_id=job_id,
            policy_hash=key.policy_hash,
            task=key.task,
            region=key.region,
            batch_start=key.batch_start,
            reports=[
                ReportInit(
                    report_id=p.report.report_id,
                    public_share=p.report.public_share,
                    helper_share=p.report.helper_share,
                    leader_verifier_share=p.verifier_share,
                )
                for p in prepared
            ],
        )
        try:
            answer = self._helper.aggregate(request)
        except AggregationRefused as exc:
            if exc.status_code == 401:  # our token: every job would be refused alike
                raise HelperUnavailable(f"the helper refuses the leader's token: {exc}") from exc
            stats.jobs_refused[exc.reason] += 1
            self._audit_append(
                [
                    AuditRecord(
                        "aggregation_job",
                        "rejected",
                        reason=exc.reason,
                        detail=json.dumps(
                            {"job": job_id, "batch": key.batch_id, "detail": exc.detail}
                        ),
                    )
                ]
            )
            if exc.reason not in _FINAL_REFUSALS:
                log.error("helper refused job %s (%s): %s", job_id, exc.reason, exc.detail)
                return False
            rejected = [(p.report, exc.reason) for p in prepared]
            with self._sink.locked() as conn, transaction(conn):
                set_outcomes(conn, key.task, [], [(r.report_id, why) for r, why in rejected])
            self._record_rejections(key, rejected, stats)
            return True
        outputs: list[bytes] = []
        aggregated: list[bytes] = []
        rejected_now: list[tuple[PendingReport, str]] = []
        for p, result in zip(prepared, answer.results, strict=True):
            if result.status == "rejected":
                rejected_now.append((p.report, str(result.reason)))
                continue
            assert result.message is not None
            try:
                outputs.append(t.vdaf.verify_next(t.ctx, 0, p.state, result.message))
            except Prio3Error:
                # The helper counted it and we cannot: the batch's counts now differ and
                # its collection will be refused (batch_mismatch). Only a bug gets here.
                log.error(
                    "report %s: the helper's message does not finish", p.report.report_id.hex()
                )
                rejected_now.append((p.report, str(ReportReason.REPORT_VERIFY_FAILED)))
                continue
            aggregated.append(p.report.report_id)
        share = t.vdaf.aggregate(0, outputs)
        with self._sink.locked() as conn, transaction(conn):
            batch = leader_batch(conn, key)
            if batch is not None:
                share = t.vdaf.merge(batch.aggregate_share, share)
            save_batch(
                conn,
                LeaderBatch(
                    key,
                    share,
                    (batch.reports if batch else 0) + len(aggregated),
                    batch_checksum(aggregated, batch.checksum if batch else EMPTY_CHECKSUM),
                    batch.status if batch else "open",
                ),
            )
            set_outcomes(
                conn, key.task, aggregated, [(r.report_id, why) for r, why in rejected_now]
            )
        stats.jobs += 1
        stats.reports_aggregated += len(aggregated)
        self._audit_append(
            [
                AuditRecord(
                    "aggregation_job",
                    "accepted",
                    detail=json.dumps(
                        {
                            "job": job_id,
                            "batch": key.batch_id,
                            "aggregated": len(aggregated),
                            "rejected": len(rejected_now),
                        },
                        sort_keys=True,
                    ),
                )
            ]
        )
        self._record_rejections(key, rejected_now, stats)
        return True

    def _reject_pending(self, key: BatchKey, reason: ReportReason, stats: RunStats) -> None:
        with self._sink.locked() as conn, transaction(conn):
            reports = pending_reports(conn, key, assigned=False) + pending_reports(
                conn, key, assigned=True
            )
            set_outcomes(conn, key.task, [], [(r.report_id, str(reason)) for r in reports])
        self._record_rejections(key, [(r, str(reason)) for r in reports], stats)

    def _record_rejections(
        self, key: BatchKey, rejected: Sequence[tuple[PendingReport, str]], stats: RunStats
    ) -> None:
        for _, reason in rejected:
            stats.reports_rejected[reason] += 1
        self._audit_append(
            [
                AuditRecord(
                    "prio_report",
                    "rejected",
                    device_id=r.device_id,
                    reason=reason,
                    detail=json.dumps({"batch": key.batch_id, "report_id": r.report_id.hex()}),
                )
                for r, reason in rejected
            ]
        )

    def _audit_append(self, records: list[AuditRecord]) -> None:
        if self._audit is not None and records:
            self._audit.append_many(records)
