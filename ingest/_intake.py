"""One batch, top to bottom: verify every item, drop recent duplicates, admit the rest
against their devices' ledger, publish, answer.

Kept apart from HTTP so the processing order reads in one method and can be tested
without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from uuid import UUID

from auditlog import AuditLog, AuditRecord
from ingest._audit_group import GroupedAudit
from ingest._bus import EnvelopeBus
from ingest._client_reports import client_report_record
from ingest._device_ledger import DeviceLedger, Refused
from ingest._verify import Accepted, EnvelopeVerifier, RecentlyAccepted, Rejected, Verdict
from ingest._waves import Waves
from schemas import BatchResult, IngestedEnvelope, ItemResult, RejectReason

__all__ = ["EnvelopeIntake"]

# Below this many base64 characters a batch is verified on the event loop: a thread hop
# costs more than unsealing and parsing a few small envelopes. Above it, verification
# (unseal, Ed25519, pydantic parse: all CPU) moves to a worker thread so one large batch
# does not stall every other request on this replica.
_INLINE_VERIFY_CHARS = 64 * 1024

_DUPLICATE_DETAIL = "already accepted by this ingest; not published again"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class EnvelopeIntake:
    """Verifies a batch, admits it against each device's ledger, publishes the admitted
    envelopes, and builds the `BatchResult`."""

    def __init__(
        self,
        verifier: EnvelopeVerifier,
        bus: EnvelopeBus,
        recent: RecentlyAccepted,
        audit: AuditLog | None = None,
        *,
        ledger: DeviceLedger,
        clock: Callable[[], datetime] | None = None,
    ):
        """`clock`: the ingest's clock (receipt time: stamps `received_at`, judges
        clock skew and dates budget charges); tests and the fleet simulator move it."""
        self.verifier = verifier
        self.bus = bus
        self.recent = recent
        self.audit = audit
        self._audit_group = GroupedAudit(audit) if audit is not None else None
        self.ledger = ledger
        self._clock = clock or _utc_now
        self._waves = Waves()

    def _verify_all(self, items: Sequence[str], received_at: datetime) -> list[Verdict]:
        verify = self.verifier.verify
        return [verify(item, received_at=received_at) for item in items]

    async def submit(self, items: Sequence[str]) -> BatchResult:
        """Process one batch; returns only after every accepted envelope is durable.

        In order: verify each item (stateless), answer recent duplicates, admit the
        rest against their devices' ledger (order, one contribution per window, daily
        epsilon: stateful, durable, charged in one transaction), publish, audit.
        Raises `BusUnavailable` or `LedgerUnavailable` (nothing is reported accepted).
        The three commits run in a wave with the other requests verified meanwhile
        (`ingest._waves`), so each is one transaction for all of them.
        """
        received_at = self._clock()
        if sum(len(i) for i in items) <= _INLINE_VERIFY_CHARS:
            verdicts = self._verify_all(items, received_at)
        else:
            verdicts = await asyncio.to_thread(self._verify_all, items, received_at)
        return await self._waves.run(lambda: self._commit(verdicts, received_at))

    async def _commit(self, verdicts: list[Verdict], received_at: datetime) -> BatchResult:
        """Admit, publish and audit verified `verdicts` (replacing refusals in place)."""
        # Envelope ids are unique per device, not across devices: a device that learns
        # another's envelope id (the audit log shows them) must not pre-empt it.
        in_batch: set[tuple[str, UUID]] = set()
        duplicates: set[int] = set()
        fresh: list[tuple[int, Accepted]] = []
        for index, verdict in enumerate(verdicts):
            if isinstance(verdict, Accepted):
                key = (verdict.item.envelope.device_id, verdict.envelope_id)
                if key in in_batch or key in self.recent:
                    duplicates.add(index)
                else:
                    in_batch.add(key)
                    fresh.append((index, verdict))
        try:
            decisions = await self.ledger.admit([a.item for _, a in fresh], received_at)
        except BaseException:
            await self._audit(verdicts, rejected_only=True)
            raise
        to_publish: list[IngestedEnvelope] = []
        for (index, accepted), decision in zip(fresh, decisions, strict=True):
            if isinstance(decision, Refused):
                env = accepted.item.envelope
                verdicts[index] = Rejected(
                    decision.reason, decision.detail, env.envelope_id, env.device_id
                )
            else:
                to_publish.append(accepted.item)

        if to_publish:
            try:
                await self.bus.publish(to_publish)
            except BaseException:
                # Nothing was accepted; the refusals were still decided. (Admitted
                # envelopes keep their charge: their retry is published uncharged.)
                await self._audit(verdicts, rejected_only=True)
                raise
            # Only now: an id in the cache must mean "durable", or a retry after a 503
            # would be told "already accepted" for an envelope that was lost.
            self.recent.add_all((e.envelope.device_id, e.envelope.envelope_id) for e in to_publish)
        await self._audit(verdicts, rejected_only=False)
        results = [_result(i, v, duplicate=i in duplicates) for i, v in enumerate(verdicts)]
        rejected = sum(r.status == "rejected" for r in results)
        return BatchResult(accepted=len(results) - rejected, rejected=rejected, results=results)

    async def _audit(self, verdicts: Sequence[Verdict], *, rejected_only: bool) -> None:
        """The batch's entries, durable when this returns: off the event loop (it fsyncs),
        in one transaction with those of other requests waiting meanwhile."""
        if self._audit_group is None:
            return
        records = [
            _audit_record(v) for v in verdicts if not (rejected_only and isinstance(v, Accepted))
        ]
        if not rejected_only:
            reports = (
                client_report_record(v.item.envelope) for v in verdicts if isinstance(v, Accepted)
            )
            records.extend(r for r in reports if r is not None)
        await self._audit_group.append(records)


def _result(index: int, verdict: Verdict, *, duplicate: bool) -> ItemResult:
    if isinstance(verdict, Rejected):
        return ItemResult(
            index=index,
            status="rejected",
            envelope_id=verdict.envelope_id,
            reason=verdict.reason,
            detail=verdict.detail,
        )
    if duplicate:
        return ItemResult(
            index=index,
            status="accepted",
            envelope_id=verdict.envelope_id,
            reason=RejectReason.DUPLICATE,
            detail=_DUPLICATE_DETAIL,
        )
    return ItemResult(index=index, status="accepted", envelope_id=verdict.envelope_id)


def _audit_record(verdict: Verdict) -> AuditRecord:
    if isinstance(verdict, Accepted):
        env = verdict.item.envelope
        return AuditRecord(
            "envelope",
            "accepted",
            env.device_id,
            None,
            f"envelope {env.envelope_id} assurance={verdict.item.assurance}",
        )
    prefix = f"envelope {verdict.envelope_id}: " if verdict.envelope_id else ""
    return AuditRecord(
        "envelope", "rejected", verdict.device_id, verdict.reason.value, prefix + verdict.detail
    )
