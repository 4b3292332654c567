"""Envelopes waiting to be sent, and the delivery of one batch.

The outbox is bounded: when it is full a new envelope is dropped and counted, never
blocking the caller. Envelopes are signed and sealed only when a batch is sent, so
`sent_at` is the real send time even after an outage. A batch that fails in a
retryable way goes back to the front of the outbox; items the ingest rejected are
counted by reason and dropped (sending the same bytes again would fail the same way).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime

from client._drops import DropCounter, DropReason
from client._errors import TransportError
from client._sealing import EnvelopeSealer
from client._transport import Transport
from schemas import MAX_BATCH, MAX_SEALED_BYTES, EnvelopeBatch, EnvelopeV1

__all__ = ["Outbox", "send_one_batch"]


class Outbox:
    """A bounded FIFO of envelopes not yet accepted by the ingest."""

    def __init__(self, capacity: int, drops: DropCounter) -> None:
        self._capacity = capacity
        self._drops = drops
        self._lock = threading.Lock()
        self._items: deque[EnvelopeV1] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, envelope: EnvelopeV1) -> bool:
        """Queue an envelope; False (and counted as `queue_full`) when the outbox is full."""
        with self._lock:
            if len(self._items) >= self._capacity:
                self._drops.add(DropReason.QUEUE_FULL)
                return False
            self._items.append(envelope)
            return True

    def take(self, n: int = MAX_BATCH) -> list[EnvelopeV1]:
        """Remove and return up to `n` envelopes, oldest first."""
        with self._lock:
            return [self._items.popleft() for _ in range(min(n, len(self._items)))]

    def put_back(self, envelopes: list[EnvelopeV1]) -> None:
        """Return a failed batch to the front, keeping order (beyond capacity: counted)."""
        with self._lock:
            room = max(self._capacity - len(self._items), 0)
            keep = envelopes[:room]
            if len(envelopes) > room:
                self._drops.add(DropReason.QUEUE_FULL, len(envelopes) - room)
            self._items.extendleft(reversed(keep))

    def reset_after_fork(self) -> None:
        """A fresh lock in a forked child."""
        self._lock = threading.Lock()


def send_one_batch(
    outbox: Outbox,
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
    items: list[str] = []
    for envelope in envelopes:
        envelope = envelope.model_copy(update={"sent_at": sent_at})
        try:
            sealed = sealer.seal(envelope)
        except Exception:
            drops.add(DropReason.SEAL_FAILED)
            continue
        if len(sealed) > MAX_SEALED_BYTES:
            drops.add(DropReason.SEAL_FAILED)
            continue
        stamped.append(envelope)
        items.append(sealed)
    if not items:
        return len(envelopes)
    try:
        result = transport.send(EnvelopeBatch(envelopes=items))
    except TransportError:
        outbox.put_back(stamped)
        raise
    except Exception as exc:  # a transport bug must not kill the worker nor lose data
        outbox.put_back(stamped)
        raise TransportError(f"transport failed unexpectedly: {exc!r}") from exc
    for item in result.results:
        if item.status == "rejected":
            drops.add(f"rejected:{item.reason.value if item.reason else item.detail}")
    return len(envelopes)
