"""One batch, top to bottom: verify every item, drop recent duplicates, admit the rest
against their devices' ledger, publish, answer.

Kept apart from HTTP so the processing order reads in one method and can be tested
without a server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from auditlog import AuditLog, AuditRecord
from ingest._audit_group import GroupedAudit
from ingest._bus import EnvelopeBus
from ingest._client_reports import client_report_record
from ingest._device_ledger import DeviceLedger, Refused
from ingest._errors import BUS_UNAVAILABLE
from ingest._verify import (
    Accepted,
    EnvelopeVerifier,
    RecentlyAccepted,
    Rejected,
    Verdict,
    bounded_detail,
)
from schemas import BatchResult, IngestedEnvelope, ItemResult, RejectReason

__all__ = ["EnvelopeIntake"]

log = logging.getLogger("quietwire.ingest.intake")

# Below this many base64 characters a batch is verified on the event loop: a thread hop
# costs more than unsealing and parsing a few small envelopes. Above it, verification
# (unseal, Ed25519, pydantic parse: all CPU) moves to a worker thread so one large batch
# does not stall every other request on this replica.
_INLINE_VERIFY_CHARS = 64 * 1024

_DUPLICATE_DETAIL = "already accepted by this ingest; not published again"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Request:
    """One batch waiting for its wave, and where its answer goes."""

    received_at: datetime
    answer: asyncio.Future[BatchResult]
    items: Sequence[str] = ()
    """Not yet verified: the wave verifies them (cleared once it has)."""
    chars: int = 0
    """The base64 characters of `items`."""
    verdicts: list[Verdict] = field(default_factory=list)
    duplicates: set[int] = field(default_factory=set)
    fresh: list[tuple[int, Accepted]] = field(default_factory=list)


class EnvelopeIntake:
    """Verifies a batch, admits it against each device's ledger, publishes the admitted
    envelopes, and builds the `BatchResult`.

    Waves: the requests that arrive while a wave is committing form the next wave; the
    wave verifies their items back to back (`_verify_wave`), then is committed as one
    unit: one ledger transaction, one publish and one audit append for all of its
    requests, in arrival order. A DuckDB or SQLite commit costs
    milliseconds of CPU however little it holds, so concurrent requests share them
    rather than each paying its own; a request waits at most for the wave in flight,
    and each is answered only once its own envelopes and audit entries are durable.
    A failure of a stage fails every request of the wave (they share its transaction).

    Under concurrent load a wave first lingers `linger` seconds (as Kafka's producer
    does with `linger.ms`), so requests arriving just after it join it instead of
    starting a wave of their own: fewer, fuller commits for a millisecond of latency.
    A wave after a wave of one request (a quiet ingest) starts at once.
    """

    def __init__(
        self,
        verifier: EnvelopeVerifier,
        bus: EnvelopeBus,
        recent: RecentlyAccepted,
        audit: AuditLog | None = None,
        *,
        ledger: DeviceLedger,
        clock: Callable[[], datetime] | None = None,
        linger: float = 0.0,
    ):
        """`clock`: the ingest's clock (receipt time: stamps `received_at`, judges
        clock skew and dates budget charges); tests and the fleet simulator move it.
        `linger`: seconds a wave waits for more requests under concurrent load."""
        self.verifier = verifier
        self.bus = bus
        self.recent = recent
        self.audit = audit
        self._audit_group = GroupedAudit(audit) if audit is not None else None
        self.ledger = ledger
        self._clock = clock or _utc_now
        self._next_wave: list[_Request] = []
        self._wave: asyncio.Task[None] | None = None
        self._linger = linger
        self._last_wave_size = 0

    def now(self) -> datetime:
        """The ingest's clock now: the receipt time of a request arriving now (a deletion
        request's `received_at` and clock skew are judged by it too)."""
        return self._clock()

    def _verify_all(self, items: Sequence[str], received_at: datetime) -> list[Verdict]:
        verify = self.verifier.verify
        return [verify(item, received_at=received_at) for item in items]

    async def submit(self, items: Sequence[str]) -> BatchResult:
        """Process one batch; returns only after every accepted envelope is durable.

        In order: verify each item (stateless), answer recent duplicates, admit the
        rest against their devices' ledger (order, one contribution per window, daily
        epsilon: stateful, durable, charged in one transaction), publish, audit.
        Raises `BusUnavailable` or `LedgerUnavailable` (nothing is reported accepted).
        """
        received_at = self._clock()
        answer: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        # Its requester may be gone (client disconnect) by the time it fails: observe it.
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        request = _Request(received_at, answer)
        chars = sum(len(i) for i in items)
        if chars <= _INLINE_VERIFY_CHARS:
            request.items, request.chars = items, chars  # verified by its wave
        else:
            request.verdicts = await asyncio.to_thread(self._verify_all, items, received_at)
        self._next_wave.append(request)
        if self._wave is None or self._wave.done():
            self._wave = asyncio.create_task(self._run_waves())
        # Shielded: a client that disconnects must not cancel a wave others wait on.
        return await asyncio.shield(answer)

    async def _run_waves(self) -> None:
        while self._next_wave:
            if self._linger and self._last_wave_size > 1:
                await asyncio.sleep(self._linger)
            wave, self._next_wave = self._next_wave, []
            self._last_wave_size = len(wave)
            try:
                wave = await self._verify_wave(wave)
                if wave:
                    await self._commit(wave)
            except Exception as exc:
                for request in wave:
                    if not request.answer.done():
                        request.answer.set_exception(exc)
            except BaseException:  # cancelled (the loop is shutting down): none may hang
                for request in wave + self._next_wave:
                    request.answer.cancel()
                raise

    async def _verify_wave(self, wave: list[_Request]) -> list[_Request]:
        """Verify the small batches of `wave` back to back, on the event loop.

        One after the other, the unseal, signature and parsing code and its data stay in
        the CPU's caches; verified as each request arrived, between the HTTP work of
        the others, they cost more (ingest benchmark, two A/Bs of ten rounds: 6 to 9%
        less server CPU per envelope at batch 1; at batch 10, 3 to 5%, within the
        noise). A request whose verification fails unexpectedly (a bug, not a bad item:
        those are verdicts) is answered with the error alone and leaves the wave; the
        others go on. After every 64 KiB of items the loop gets a turn, so a wave of
        many requests does not hold it (a health probe, a new connection) for longer
        than one large batch would."""
        kept: list[_Request] = []
        since_yield = 0
        for request in wave:
            if request.items:
                if since_yield > _INLINE_VERIFY_CHARS:
                    await asyncio.sleep(0)
                    since_yield = 0
                since_yield += request.chars
                try:
                    request.verdicts = self._verify_all(request.items, request.received_at)
                except Exception as exc:
                    if not request.answer.done():
                        request.answer.set_exception(exc)
                    continue
                request.items = ()
            kept.append(request)
        return kept

    async def _commit(self, wave: list[_Request]) -> None:
        """Admit, publish and audit a wave (replacing refusals in place), then answer."""
        for request in wave:
            self._split_duplicates(request)
        try:
            outcomes = await self.ledger.admit_requests(
                [([a.item for _, a in r.fresh], r.received_at) for r in wave]
            )
        except BaseException:
            await self._audit_after_failure(wave, unpublished=False)
            raise
        to_publish: list[IngestedEnvelope] = []
        encoded: list[bytes] = []
        for request, decisions in zip(wave, outcomes, strict=True):
            for (index, accepted), decision in zip(request.fresh, decisions, strict=True):
                if isinstance(decision, Refused):
                    env = accepted.item.envelope
                    request.verdicts[index] = Rejected(
                        decision.reason, decision.detail, env.envelope_id, env.device_id
                    )
                else:
                    to_publish.append(accepted.item)
                    encoded.append(accepted.encoded)
        if to_publish:
            try:
                await self.bus.publish(to_publish, encoded)
            except BaseException:
                # Nothing was accepted; the refusals were still decided, and so were the
                # admissions: they keep their charge (the retry is published uncharged).
                await self._audit_after_failure(wave, unpublished=True)
                raise
            # Only now: an id in the cache must mean "durable", or a retry after a 503
            # would be told "already accepted" for an envelope that was lost.
            self.recent.add_all((e.envelope.device_id, e.envelope.envelope_id) for e in to_publish)
        await self._audit(wave, rejected_only=False)
        for request in wave:
            if not request.answer.done():
                request.answer.set_result(_batch_result(request))

    def _split_duplicates(self, request: _Request) -> None:
        # Envelope ids are unique per device, not across devices: a device that learns
        # another's envelope id (the audit log shows them) must not pre-empt it.
        in_batch: set[tuple[str, UUID]] = set()
        for index, verdict in enumerate(request.verdicts):
            if isinstance(verdict, Accepted):
                key = (verdict.item.envelope.device_id, verdict.envelope_id)
                if key in in_batch or key in self.recent:
                    request.duplicates.add(index)
                else:
                    in_batch.add(key)
                    request.fresh.append((index, verdict))

    async def _audit_after_failure(self, wave: Sequence[_Request], *, unpublished: bool) -> None:
        """The decisions of a wave that failed (the ledger or the bus): its refusals, and
        with `unpublished` its admissions too, as not published (the ledger charged them).
        A failure of the audit log itself here is logged: the wave's own error is the one
        its requests hear."""
        try:
            await self._audit(wave, rejected_only=True, unpublished=unpublished)
        except Exception:
            log.exception("the audit log did not record a failed wave's decisions")

    async def _audit(
        self, wave: Sequence[_Request], *, rejected_only: bool, unpublished: bool = False
    ) -> None:
        """The wave's entries, durable when this returns: off the event loop (it fsyncs),
        in one transaction with those of other callers waiting meanwhile."""
        if self._audit_group is None:
            return
        records: list[AuditRecord] = []
        for request in wave:
            verdicts = request.verdicts
            records.extend(_decision_records(verdicts, rejected_only=rejected_only))
            if unpublished:
                # Only what the ledger admitted (its refusals replaced their verdicts).
                records.extend(
                    _unpublished_record(a) for i, a in request.fresh if request.verdicts[i] is a
                )
            if not rejected_only:
                reports = (
                    client_report_record(v.item.envelope)
                    for v in verdicts
                    if isinstance(v, Accepted)
                )
                records.extend(r for r in reports if r is not None)
        await self._audit_group.append(records)


def _batch_result(request: _Request) -> BatchResult:
    results = [
        _result(i, v, duplicate=i in request.duplicates) for i, v in enumerate(request.verdicts)
    ]
    rejected = sum(r.status == "rejected" for r in results)
    return BatchResult(accepted=len(results) - rejected, rejected=rejected, results=results)


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


_UNAUTHENTICATED = frozenset(
    {
        RejectReason.ITEM_TOO_LARGE,
        RejectReason.NOT_BASE64,
        RejectReason.UNSEAL_FAILED,
        RejectReason.MALFORMED_SIGNED,
        RejectReason.KEY_NOT_ATTESTED,
        RejectReason.DEVICE_REVOKED,
        RejectReason.ATTESTATION_EXPIRED,
        RejectReason.BAD_SIGNATURE,
    }
)
"""Refusals of items no key vouches for, decided before (or by) the signature check:
anyone can send them, free of any key (a TPM key's standing is checked first, and its
public half is no secret)."""


def _decision_records(verdicts: Sequence[Verdict], *, rejected_only: bool) -> list[AuditRecord]:
    """A request's audit entries: one per item a key vouched for (accepted, or refused
    after its signature was checked), and one per reason for the items refused before
    that. Those cost an attacker nothing (a one-character item is `not_base64`): an
    entry each would let 1 KiB of junk write 256 entries, about 50 KiB of log that can
    never be pruned (the log is a hash chain). So an entry costs a sender either a
    request or an item signed by a key (a sealed, signed envelope of its own)."""
    records: list[AuditRecord] = []
    unvouched: dict[RejectReason, list[Rejected]] = {}
    for verdict in verdicts:
        if isinstance(verdict, Rejected) and verdict.reason in _UNAUTHENTICATED:
            unvouched.setdefault(verdict.reason, []).append(verdict)
        elif not (rejected_only and isinstance(verdict, Accepted)):
            records.append(_audit_record(verdict))
    for reason, refused in unvouched.items():
        if len(refused) == 1:
            records.append(_audit_record(refused[0]))
            continue
        devices = {r.device_id for r in refused}
        device = devices.pop() if len(devices) == 1 else None
        records.append(
            AuditRecord(
                "envelope",
                "rejected",
                device,
                reason.value,
                bounded_detail(
                    f"{len(refused)} items of one request; the first: {refused[0].detail}"
                ),
            )
        )
    return records


def _unpublished_record(admitted: Accepted) -> AuditRecord:
    env = admitted.item.envelope
    return AuditRecord(
        "envelope",
        "rejected",
        env.device_id,
        BUS_UNAVAILABLE,
        f"envelope {env.envelope_id}: admitted by the device ledger (charged), not "
        "published: the bus failed; the device's retry is published uncharged",
    )


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
        "envelope",
        "rejected",
        verdict.device_id,
        verdict.reason.value,
        bounded_detail(prefix + verdict.detail),
    )
