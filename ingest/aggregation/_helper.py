"""The helper's decisions: verify and sum a job's reports, reveal a batch once.

Per report, in this order (the first failing check is the reason):

1. a report id seen before, or twice in the job: `report_replayed`;
2. the sealed helper share does not open, or is not a `HelperShareV1`:
   `report_decode_failed`;
3. the share names another policy, task, report id or batch than the job:
   `share_binding_mismatch` (a leader moving a share to another report);
4. Prio3 verify_init (aggregator 1) on undecodable shares: `report_decode_failed`;
5. the leader's and the helper's verifier shares do not combine into a valid proof:
   `report_verify_failed` (an out-of-bounds measurement, a tampered share);
6. verify_next gives the output share, summed into the batch's aggregate share.

Every report id of an answered job is remembered, whatever its verdict: a report is
looked at once. A job is answered, stored and counted in one transaction; the same job
again (a retry after a lost answer) gets the stored answer; the same job id with other
content is refused (`job_conflict`). A collection reveals the batch's aggregate share
with this helper's noise only if the leader's count and checksum match its own and the
count reaches the task's minimum batch size; the noise is drawn once and stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox
from pydantic import ValidationError
from quietwire_prio import Prio3, Prio3Error, VerifyError

from auditlog import AuditLog, AuditRecord
from ingest.aggregation._batches import EMPTY_CHECKSUM, BatchKey, batch_checksum
from ingest.aggregation._catalog import TaskCatalog
from ingest.aggregation._errors import AggregationRefused
from ingest.aggregation._helper_store import HelperBatch, HelperStore
from ingest.aggregation._noise import NoiseSource, add_noise
from ingest.aggregation._vdaf import task_vdaf, task_verify_key
from ingest.aggregation._wire import (
    AggregationJobRequest,
    AggregationJobResponse,
    CollectionRequest,
    CollectionResponse,
    ReportInit,
    ReportReason,
    ReportResult,
)
from policies import AggregationTask, Policy, task_context
from schemas import HelperShareV1, report_batch_start

__all__ = ["HelperAggregator"]

log = logging.getLogger("quietwire.helper")


def _rejected(report: ReportInit, reason: ReportReason) -> tuple[ReportResult, None]:
    return ReportResult(report_id=report.report_id, status="rejected", reason=reason), None


class HelperAggregator:
    """The helper's side of Prio3 aggregation over its own state. Thread-safe.

    Requests are handled one at a time (a lock): the replay check, the batch's running
    aggregate and the stored answer must see each other's effects.
    """

    def __init__(
        self,
        private_key: PrivateKey,
        catalog: TaskCatalog,
        verify_key: bytes,
        store: HelperStore,
        audit: AuditLog,
        noise: NoiseSource,
        *,
        max_job_reports: int,
    ) -> None:
        self._box = SealedBox(private_key)
        self._catalog = catalog
        self._verify_key = verify_key
        self._store = store
        self._audit = audit
        self._noise = noise
        self._max_job_reports = max_job_reports
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def stats(self) -> dict[str, int]:
        """What the helper decided so far, by decision and reason (this process)."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    # -- aggregation jobs ---------------------------------------------------------------

    def aggregate(self, job: AggregationJobRequest) -> AggregationJobResponse:
        """Verify and sum `job`'s reports; raises `AggregationRefused` for the whole job."""
        key = BatchKey(job.policy_hash, job.task, job.region, job.batch_start)
        try:
            policy, task = self._task(key)
            if len(job.reports) > self._max_job_reports:
                raise AggregationRefused(
                    "job_too_large",
                    f"{len(job.reports)} reports; this helper takes {self._max_job_reports}",
                    status_code=413,
                )
            with self._lock:
                response, fresh = self._aggregate_locked(job, key, policy, task)
        except AggregationRefused as exc:
            self._refused("helper_job", exc, key, job=job.job_id)
            raise
        if fresh:
            self._record_job(job, key, response)
        return response

    def _aggregate_locked(
        self, job: AggregationJobRequest, key: BatchKey, policy: Policy, task: AggregationTask
    ) -> tuple[AggregationJobResponse, bool]:
        digest = hashlib.sha256(job.model_dump_json().encode()).hexdigest()
        stored = self._store.job(job.job_id)
        if stored is not None:
            if stored.request_digest != digest:
                raise AggregationRefused(
                    "job_conflict", "this job id was answered for other reports", status_code=409
                )
            self._counts["jobs_repeated"] += 1
            return AggregationJobResponse.model_validate_json(stored.response), False
        batch = self._store.batch(key)
        if batch is not None and batch.collected:
            raise AggregationRefused(
                "batch_collected", f"batch {key.batch_id} was collected", status_code=409
            )
        ids = [r.report_id for r in job.reports]
        already = self._store.seen(task.id, ids)
        seen = set(already)
        vdaf = task_vdaf(task)
        ctx = task_context(key.policy_hash, task.id)
        verify_key = task_verify_key(self._verify_key, key.policy_hash, task.id)
        results: list[ReportResult] = []
        outputs: list[bytes] = []
        aggregated: list[bytes] = []
        for report in job.reports:
            if report.report_id in seen:
                result, out = _rejected(report, ReportReason.REPORT_REPLAYED)
            else:
                seen.add(report.report_id)
                result, out = self._verify(vdaf, ctx, verify_key, key, policy, report)
            results.append(result)
            if out is not None:
                outputs.append(out)
                aggregated.append(report.report_id)
        share = vdaf.aggregate(1, outputs)
        if batch is not None:
            share = vdaf.merge(batch.aggregate_share, share)
        updated = HelperBatch(
            share,
            (batch.reports if batch else 0) + len(aggregated),
            batch_checksum(aggregated, batch.checksum if batch else EMPTY_CHECKSUM),
        )
        response = AggregationJobResponse(job_id=job.job_id, results=results)
        new_ids = [i for i in dict.fromkeys(ids) if i not in already]
        self._store.commit_job(
            job.job_id, digest, response.model_dump_json(), key, new_ids, updated
        )
        return response, True

    def _verify(
        self,
        vdaf: Prio3,
        ctx: bytes,
        verify_key: bytes,
        key: BatchKey,
        policy: Policy,
        report: ReportInit,
    ) -> tuple[ReportResult, bytes | None]:
        try:
            share = HelperShareV1.model_validate_json(self._box.decrypt(report.helper_share))
        except (CryptoError, ValidationError):
            return _rejected(report, ReportReason.REPORT_DECODE_FAILED)
        if (
            share.policy_hash != key.policy_hash
            or share.task != key.task
            or share.report_id != report.report_id
            or report_batch_start(share.window_start, policy.window_seconds) != key.batch_start
        ):
            return _rejected(report, ReportReason.SHARE_BINDING_MISMATCH)
        try:
            state, helper_share = vdaf.verify_init(
                verify_key, ctx, 1, report.report_id, report.public_share, share.share
            )
            message = vdaf.verifier_shares_to_message(
                ctx, report.leader_verifier_share, helper_share
            )
            output = vdaf.verify_next(ctx, 1, state, message)
        except VerifyError:
            return _rejected(report, ReportReason.REPORT_VERIFY_FAILED)
        except Prio3Error:
            return _rejected(report, ReportReason.REPORT_DECODE_FAILED)
        return ReportResult(report_id=report.report_id, status="continue", message=message), output

    def _record_job(
        self, job: AggregationJobRequest, key: BatchKey, response: AggregationJobResponse
    ) -> None:
        rejected = [r for r in response.results if r.status == "rejected"]
        continued = len(response.results) - len(rejected)
        records = [
            AuditRecord(
                "helper_job",
                "accepted",
                detail=json.dumps(
                    {
                        "job": job.job_id,
                        "batch": key.batch_id,
                        "continued": continued,
                        "rejected": len(rejected),
                    },
                    sort_keys=True,
                ),
            )
        ]
        records.extend(
            AuditRecord(
                "helper_report",
                "rejected",
                reason=str(r.reason),
                detail=json.dumps(
                    {"job": job.job_id, "batch": key.batch_id, "report_id": r.report_id.hex()},
                    sort_keys=True,
                ),
            )
            for r in rejected
        )
        self._audit.append_many(records)
        with self._lock:
            self._counts["jobs"] += 1
            self._counts["reports_continued"] += continued
            for r in rejected:
                self._counts[f"reports_rejected.{r.reason}"] += 1
        if rejected:
            log.info("job %s (%s): %d rejected", job.job_id, key.batch_id, len(rejected))

    # -- collections --------------------------------------------------------------------

    def collect(self, request: CollectionRequest) -> CollectionResponse:
        """The batch's aggregate share with this helper's noise (drawn once, stored)."""
        key = BatchKey(request.policy_hash, request.task, request.region, request.batch_start)
        try:
            _, task = self._task(key)
            with self._lock:
                batch, fresh = self._collect_locked(request, key, task)
        except AggregationRefused as exc:
            self._refused("helper_collection", exc, key)
            raise
        assert batch.noisy_share is not None
        assert batch.noise_scale is not None
        if fresh:
            self._audit.append(
                AuditRecord(
                    "helper_collection",
                    "accepted",
                    detail=json.dumps(
                        {
                            "batch": key.batch_id,
                            "reports": batch.reports,
                            "scale": batch.noise_scale,
                        },
                        sort_keys=True,
                    ),
                )
            )
        with self._lock:
            self._counts["collections" if fresh else "collections_repeated"] += 1
        return CollectionResponse(
            policy_hash=key.policy_hash,
            task=key.task,
            region=key.region,
            batch_start=key.batch_start,
            report_count=batch.reports,
            aggregate_share=batch.noisy_share,
            noise_scale=batch.noise_scale,
        )

    def _collect_locked(
        self, request: CollectionRequest, key: BatchKey, task: AggregationTask
    ) -> tuple[HelperBatch, bool]:
        batch = self._store.batch(key)
        count = batch.reports if batch is not None else 0
        checksum = batch.checksum if batch is not None else EMPTY_CHECKSUM
        if request.report_count != count or request.checksum != checksum:
            raise AggregationRefused(
                "batch_mismatch",
                f"the leader counts {request.report_count} reports, this helper {count} "
                f"(or their checksums differ)",
                status_code=409,
            )
        if batch is None or count < task.min_batch_size:
            raise AggregationRefused(
                "batch_too_small",
                f"{count} reports; the task reveals nothing below {task.min_batch_size}",
                status_code=409,
            )
        if batch.collected:
            return batch, False
        vdaf = task_vdaf(task)
        draw = self._noise.draw(task)
        noisy = add_noise(vdaf, batch.aggregate_share, draw)
        if not self._store.commit_collection(key, noisy, draw.scale):  # pragma: no cover
            raise AggregationRefused("batch_collected", "collected concurrently", status_code=409)
        return HelperBatch(batch.aggregate_share, count, checksum, noisy, draw.scale), True

    # -- shared -------------------------------------------------------------------------

    def _task(self, key: BatchKey) -> tuple[Policy, AggregationTask]:
        policy = self._catalog.policy(key.policy_hash)
        task = self._catalog.task(key.policy_hash, key.task)
        if policy is None or task is None:
            raise AggregationRefused(
                "unknown_task", f"this helper serves no task {key.task!r} of that policy"
            )
        if report_batch_start(key.batch_start, policy.window_seconds) != key.batch_start:
            raise AggregationRefused(
                "batch_misaligned", "batch_start is not the start of one of the policy's windows"
            )
        return policy, task

    def _refused(
        self, action: str, exc: AggregationRefused, key: BatchKey, *, job: str | None = None
    ) -> None:
        detail = {"batch": key.batch_id, "detail": exc.detail}
        if job is not None:
            detail["job"] = job
        self._audit.append(
            AuditRecord(
                action, "rejected", reason=exc.reason, detail=json.dumps(detail, sort_keys=True)
            )
        )
        with self._lock:
            self._counts[f"{action}_refused.{exc.reason}"] += 1
        log.warning("%s refused (%s): %s", action, exc.reason, exc.detail)
