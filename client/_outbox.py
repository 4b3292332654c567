"""Delivery of pending envelopes and deletion requests from the spool.

Envelopes are signed and sealed only when a batch is sent, so `sent_at` is the real
send time even after an outage, and the key is the one in use then (a TPM key that
cannot attest is replaced by the software key between two sends).

Nothing whose budget was spent is deleted because of an answer that a retry or a
fallback could fix:

- a batch that fails in a retryable way (network, 5xx, any whole-batch 4xx but an
  invalid batch: see `client._transport`) goes back to the front of the spool, and the
  caller backs off; a 413 splits the batch in halves and sends them in order;
- an item rejected because its TPM key is not (or no longer) attested
  (`REFUSED_KEY_REASONS`) makes the key store fall back to its software key; the item
  goes back to the spool and is signed again (tiers a software key may not carry are
  withheld then, counted `tier_requires_tpm`). Without a key to fall back to, the
  item waits, with backoff, for the key to be attested again;
- an item whose software signature the ingest refuses for tiers it names
  (`software_key_refused`: its attestation policy is stricter than the client was
  told) teaches the client those tiers: they are withheld from software signatures
  from now on (and no longer released, nor charged, while the key is software), and
  the item is sealed again without them;
- an item refused for its device's budget of the ingest's day (`budget_exceeded`: a
  backlog after days offline) is kept and sent again after the ingest's next UTC
  midnight (`client._send_hold`), counted `deferred:budget_exceeded`; nothing more is
  sent until then. An item refused as ahead of the ingest's clock (`clock_skew`) is
  kept and sent again, with backoff, once the ingest's time has caught up, counted
  `deferred:clock_skew`; spooled envelopes still ahead of the ingest's clock are not
  sent at all (held, counted once `held:clock_ahead`). Retention bounds both waits
  (`Spool.expire`, `Spool.expire_ahead`);
- other rejections judge the envelope itself (the same bytes would be refused again):
  counted as `rejected:<reason>` and forgotten.

The drops counted since the last report ride in the first envelope of a batch
(`client._client_report`). Consent is checked again at send time: with no tier
consented nothing leaves, and an envelope carrying a tier no longer consented (a
revocation whose purge a crash cut short) is deleted, counted `consent_revoked`.
Deletion requests go first: a revocation must reach the ingest even if envelopes are
queued behind it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from datetime import datetime

from client._client_report import ClientReporter
from client._drops import DropCounter, DropReason
from client._errors import TransportError
from client._sealing import EnvelopeSealer
from client._send_hold import Held, SendHold
from client._spool import Spool
from client._transport import Transport
from schemas import (
    MAX_SEALED_BYTES,
    DeletionRequestV1,
    EnvelopeBatch,
    EnvelopeV1,
    ItemResult,
    RejectReason,
    SignedDeletionRequest,
    Tier,
)

__all__ = ["MAX_BATCH_BYTES", "REFUSED_KEY_REASONS", "send_deletions", "send_one_batch"]

MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Sealed bytes per request: half the ingest's default body limit (16 MiB). An envelope
with Prio3 reports is about 100 KB sealed, so a long offline spell's backlog goes out in
several requests instead of one the ingest would refuse whole (413)."""

REFUSED_KEY_REASONS = frozenset({RejectReason.KEY_NOT_ATTESTED, RejectReason.ATTESTATION_EXPIRED})
"""Item rejections about the signing key, not the envelope: fixed by another key."""

_DEFERRED = {
    RejectReason.BUDGET_EXCEEDED.value: DropReason.DEFERRED_BUDGET,
    RejectReason.CLOCK_SKEW.value: DropReason.DEFERRED_CLOCK_SKEW,
}
"""Item rejections about when the envelope arrived, not what it is: fixed by time."""

_QUOTED = re.compile(r"'([a-z]+)'")

_TOO_LARGE = 413


def send_deletions(
    spool: Spool,
    transport: Transport,
    drops: DropCounter,
    sign: Callable[[DeletionRequestV1], SignedDeletionRequest] | None = None,
) -> int:
    """Send every pending deletion request; returns how many the ingest recorded.

    `sign` signs a request queued unsigned (`DeletionRequestV1`) with the key in use
    now, on this (the sending) thread. Raises `TransportError` (the rest stay pending)
    if the ingest cannot be reached.
    """
    recorded = 0
    for request_id, pending in spool.deletions():
        try:
            if isinstance(pending, SignedDeletionRequest):
                request = pending
            elif sign is None:
                raise TransportError("an unsigned deletion request and no key to sign it")
            else:
                request = sign(pending)
            receipt = transport.send_deletion(request)
        except TransportError:
            raise
        except Exception as exc:  # a transport bug must not reach the host app (flush)
            raise TransportError(f"sending a deletion request failed: {exc!r}") from exc
        if receipt is None:
            # Refused for good (a 4xx): the same bytes would be refused again.
            drops.add("rejected:deletion_request")
        else:
            recorded += 1
        spool.acknowledge_deletion(request_id)
    return recorded


def send_one_batch(
    outbox: Spool,
    transport: Transport,
    sealer: EnvelopeSealer,
    drops: DropCounter,
    now: Callable[[], datetime],
    *,
    consented: Collection[Tier] | None = None,
    fall_back: Callable[[str], bool] | None = None,
    reporter: ClientReporter | None = None,
    withhold: Callable[[frozenset[Tier]], bool] | None = None,
    hold: SendHold | None = None,
    ingest_now: Callable[[], datetime | None] | None = None,
    take: Callable[[], list[EnvelopeV1]] | None = None,
) -> Held | None:
    """Seal and send the oldest batch; returns the hold that stops sending, if any.

    `consented`: the tiers consented now (None: not checked). `fall_back(reason)`: asked
    when the ingest refused the signing key; True if the key store switched keys (the
    items are then signed again at once). `withhold(tiers)`: asked when the ingest
    refused a software signature for tiers it names; True if they are now stripped
    from what the software key signs (the items are then sealed again without them).
    `reporter`: its pending client report rides
    in the batch's first envelope (the spool's copy stays without it). `hold` decides
    what may go now on the ingest's time (`ingest_now`: None while unknown; without a
    `hold`, a fresh one that remembers nothing). Returns a `Held` (the envelopes stay
    spooled) when nothing more should be sent before `Held.until`. `take` hands out the
    batch (default `outbox.take()`): the caller's last word on whether a send starts
    (nothing taken, nothing sent). Raises `TransportError` after putting back what
    should be sent again later.
    """
    hold = hold if hold is not None else SendHold()
    envelopes = take() if take is not None else outbox.take()
    if consented is not None and envelopes:
        envelopes = _consented_only(outbox, envelopes, consented, drops)
    if not envelopes:
        return None
    held = _hold_back(outbox, envelopes, hold, drops, now, ingest_now)
    if isinstance(held, Held):
        return held
    envelopes = held
    sent_at = now()
    report = reporter.pending() if reporter is not None else None
    carrier: EnvelopeV1 | None = None
    pairs: list[tuple[EnvelopeV1, str]] = []
    unsendable: list[EnvelopeV1] = []
    size = 0
    for i, envelope in enumerate(envelopes):
        if size >= MAX_BATCH_BYTES:
            outbox.put_back(envelopes[i:])  # the next batch; order kept
            break
        update: dict[str, object] = {"sent_at": sent_at}
        if report is not None and carrier is None:
            update["client_report"] = report.report
        envelope = envelope.model_copy(update=update)
        try:
            sealed = sealer.seal(envelope)
        except Exception:
            drops.add(DropReason.SEAL_FAILED)
            unsendable.append(envelope)
            continue
        if len(sealed) > MAX_SEALED_BYTES:
            drops.add(DropReason.SEAL_FAILED)
            unsendable.append(envelope)
            continue
        pairs.append((envelope, sealed))
        size += len(sealed)
        if "client_report" in update:
            carrier = envelope
    outbox.acknowledge(unsendable)
    answered, undelivered, error = _deliver(transport, pairs)
    # Read now: the answer's `Date` is the ingest's latest time (a budget clock with a
    # simulator's monotonic clock dates a new one when it first sees it).
    ingest_after = ingest_now() if ingest_now is not None else None
    done: list[EnvelopeV1] = []
    again: list[EnvelopeV1] = []
    key_refused: str | None = None
    deferred: set[str] = set()
    for envelope, item in answered:
        reason = _reason(item)
        if reason is None:
            done.append(envelope)
            if envelope is carrier and reporter is not None and report is not None:
                reporter.delivered(report)
        elif reason in _DEFERRED:
            # Budget already spent on the device: kept until the ingest's time allows it.
            again.append(envelope)
            deferred.add(reason)
            drops.add(_DEFERRED[reason])
        elif reason in REFUSED_KEY_REASONS:
            again.append(envelope)
            key_refused = reason
        elif (
            reason == RejectReason.SOFTWARE_KEY_REFUSED
            and withhold is not None
            and (tiers := refused_tiers(item.detail))
            and withhold(tiers)
        ):
            again.append(envelope)  # sealed again without those tiers
        else:
            # Answered for good: the same bytes would be refused again.
            drops.add(f"rejected:{reason}")
            done.append(envelope)
    outbox.acknowledge(done)
    if again or undelivered:
        outbox.put_back(sorted([*again, *undelivered], key=lambda e: e.sequence))
    budget_held = (
        hold.budget_refused(ingest_after, now())
        if RejectReason.BUDGET_EXCEEDED.value in deferred
        else None
    )
    if error is not None:
        raise error
    if key_refused is not None and not (fall_back is not None and fall_back(key_refused)):
        # No other key to sign with: wait (backing off) for the key to be attested.
        raise TransportError(f"the ingest refused the signing key ({key_refused})")
    if RejectReason.CLOCK_SKEW.value in deferred:
        # Back off: the ingest's time (learned from this answer) may not have caught up
        # even where the device's estimate says it has (a stricter skew there).
        raise TransportError("the ingest refused envelopes as ahead of its clock (clock_skew)")
    return budget_held


def _hold_back(
    outbox: Spool,
    envelopes: list[EnvelopeV1],
    hold: SendHold,
    drops: DropCounter,
    now: Callable[[], datetime],
    ingest_now: Callable[[], datetime | None] | None,
) -> list[EnvelopeV1] | Held:
    """The envelopes taken that may go in this request; the rest go back to the spool.
    A `Held` if none may (all go back)."""
    ingest = ingest_now() if ingest_now is not None else None
    held = hold.check(ingest, now())
    count = hold.sendable(envelopes, ingest) if held is None else 0
    if held is None and count == 0:
        held = hold.ahead_until(envelopes[0])
        fresh = [e for e in envelopes if hold.ahead(e, ingest) and hold.first_hold(e)]
        if fresh:
            drops.add(DropReason.HELD_AHEAD, len(fresh))
    outbox.put_back(envelopes[count:])
    return held if held is not None else envelopes[:count]


def _deliver(
    transport: Transport, pairs: list[tuple[EnvelopeV1, str]]
) -> tuple[list[tuple[EnvelopeV1, ItemResult]], list[EnvelopeV1], TransportError | None]:
    """Send `pairs` (envelope, sealed item) in order: (answered items, envelopes to send
    again, the error that stopped delivery). A 413 splits the batch in halves."""
    if not pairs:
        return [], [], None
    try:
        result = transport.send(EnvelopeBatch(envelopes=[item for _, item in pairs]))
    except TransportError as exc:
        if exc.status_code != _TOO_LARGE or len(pairs) == 1:
            return [], [e for e, _ in pairs], exc
        middle = len(pairs) // 2
        first, undelivered, error = _deliver(transport, pairs[:middle])
        if error is not None:
            return first, [*undelivered, *(e for e, _ in pairs[middle:])], error
        second, undelivered, error = _deliver(transport, pairs[middle:])
        return [*first, *second], undelivered, error
    except Exception as exc:  # a transport bug must not kill the worker nor lose data
        error = TransportError(f"transport failed unexpectedly: {exc!r}")
        error.__cause__ = exc
        return [], [e for e, _ in pairs], error
    by_index = {item.index: item for item in result.results}
    # An item the answer does not mention was answered as a whole: accepted.
    accepted = ItemResult(index=-1, status="accepted")
    return [(e, by_index.get(i, accepted)) for i, (e, _) in enumerate(pairs)], [], None


def refused_tiers(detail: str | None) -> frozenset[Tier]:
    """The tiers a `software_key_refused` detail names (the ingest quotes them:
    "... for tier(s) ['content'] ...", `ingest._verify`); empty if it names none."""
    names = set(_QUOTED.findall(detail or ""))
    return frozenset(t for t in Tier if t.value in names)


def _reason(item: ItemResult) -> str | None:
    """None for an accepted item, else its reason code (or the transport's detail)."""
    if item.status != "rejected":
        return None
    return item.reason.value if item.reason is not None else str(item.detail)


def _consented_only(
    outbox: Spool, envelopes: list[EnvelopeV1], consented: Collection[Tier], drops: DropCounter
) -> list[EnvelopeV1]:
    """The envelopes the current consent covers; the others are deleted and counted."""
    allowed = set(consented)
    keep: list[EnvelopeV1] = []
    gone: list[EnvelopeV1] = []
    for envelope in envelopes:
        tiers = {a.tier for a in envelope.aggregates} | {r.tier for r in envelope.reports}
        (keep if allowed and tiers <= allowed else gone).append(envelope)
    if gone:
        outbox.acknowledge(gone)
        drops.add(DropReason.CONSENT_REVOKED, len(gone))
    return keep
