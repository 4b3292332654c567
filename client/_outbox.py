"""Delivery of pending envelopes and deletion requests from the spool.

Envelopes are signed and sealed only when a batch is sent, so `sent_at` is the real
send time even after an outage. A batch that fails in a retryable way goes back to the
front of the spool; items the ingest rejected are counted by reason and forgotten
(sending the same bytes again would fail the same way). Deletion requests go first: a
revocation must reach the ingest even if envelopes are queued behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from client._drops import DropCounter, DropReason
from client._errors import TransportError
from client._sealing import EnvelopeSealer
from client._spool import Spool
from client._transport import Transport
from schemas import MAX_SEALED_BYTES, EnvelopeBatch, EnvelopeV1

__all__ = ["MAX_BATCH_BYTES", "send_deletions", "send_one_batch"]

MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Sealed bytes per request: half the ingest's default body limit (16 MiB). An envelope
with Prio3 reports is about 100 KB sealed, so a long offline spell's backlog goes out in
several requests instead of one the ingest would refuse whole (413)."""


def send_deletions(spool: Spool, transport: Transport, drops: DropCounter) -> int:
    """Send every pending deletion request; returns how many the ingest recorded.

    Raises `TransportError` (the rest stay pending) if the ingest cannot be reached.
    """
    recorded = 0
    for request_id, request in spool.deletions():
        try:
            receipt = transport.send_deletion(request)
        except TransportError:
            raise
        except Exception as exc:  # a transport bug must not reach the host app (flush)
            raise TransportError(f"transport failed unexpectedly: {exc!r}") from exc
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
) -> int:
    """Seal and send the oldest batch; returns how many envelopes it carried.

    Raises `TransportError` after putting the batch back if the send should be retried.
    """
    envelopes = outbox.take()
    if not envelopes:
        return 0
    sent_at = now()
    stamped: list[EnvelopeV1] = []
    unsendable: list[EnvelopeV1] = []
    items: list[str] = []
    size = 0
    for i, envelope in enumerate(envelopes):
        if size >= MAX_BATCH_BYTES:
            outbox.put_back(envelopes[i:])  # the next batch; order kept
            break
        envelope = envelope.model_copy(update={"sent_at": sent_at})
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
        stamped.append(envelope)
        items.append(sealed)
        size += len(sealed)
    outbox.acknowledge(unsendable)
    if not items:
        return len(unsendable)
    try:
        result = transport.send(EnvelopeBatch(envelopes=items))
    except TransportError:
        outbox.put_back(stamped)
        raise
    except Exception as exc:  # a transport bug must not kill the worker nor lose data
        outbox.put_back(stamped)
        raise TransportError(f"transport failed unexpectedly: {exc!r}") from exc
    # Answered: accepted items are durable at the ingest, rejected ones never retried.
    outbox.acknowledge(stamped)
    for item in result.results:
        if item.status == "rejected":
            drops.add(f"rejected:{item.reason.value if item.reason else item.detail}")
    return len(stamped) + len(unsendable)
