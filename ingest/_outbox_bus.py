"""The embedded default bus: answers once the outbox holds a batch, fills the warehouse
behind the answers.

`OutboxEnvelopeBus.publish` serializes the items as they would travel on Kafka and
appends them to the outbox (`ingest._outbox`, one durable write for every batch
published while the previous append ran), then returns: the 202 that follows is as safe
as Kafka's acks=all. A drain task moves the outbox into the warehouse (`DuckDBSink.write`,
dead letters and deletions included) in batches of up to `drain_batch` items, at most
`drain_interval` seconds after they arrived, and removes them once DuckDB committed.
Items published by this process are handed over as objects; those a previous run left
(a crash, a shutdown with the warehouse down) are decoded first, and one that does not
decode becomes a dead letter, as on Kafka.

The warehouse lags the answers by up to `drain_interval` (`OUTBOX_DRAIN_SECONDS`, 1 s
by default; `stop` drains everything, so a stopped ingest's warehouse is complete).
While the warehouse refuses writes, items stay in the outbox and the drain retries
with backoff; `/healthz` names the warehouse, and once `max_backlog` items wait,
`publish` answers 503 like a Kafka that does not acknowledge, so a device keeps its
batch rather than the ingest piling up without bound. An item that fails every write
while others store becomes a dead letter rather than hold the outbox back
(`OutboxEnvelopeBus._isolate`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import suppress

from ingest._backoff import Backoff
from ingest._bus import BusItem, EnvelopeBus, encode_item
from ingest._errors import BusUnavailable
from ingest._group_commit import GroupCommit
from ingest._health import CachedProbe, Check
from ingest._outbox import Outbox
from ingest._process import collect_garbage
from ingest._salvage import salvage
from ingest._sink import DuckDBSink, SinkMessage
from warehouse import WriteResult

__all__ = ["OUTBOX_TOPIC", "OutboxEnvelopeBus"]

log = logging.getLogger("quietwire.ingest.outbox")

OUTBOX_TOPIC = "quietwire.outbox"
"""How a dead letter from the outbox names where it was (its partition is 0 and its
offset the outbox's sequence number)."""
_BACKOFF = Backoff(initial=0.2, maximum=5.0)
_ISOLATE_AFTER = 3
"""Every this many consecutive failures of one part (and at shutdown), the drain looks
for an item that fails it (`OutboxEnvelopeBus._isolate`)."""

_Part = list[tuple[int, BusItem | None]]
"""Queued items: (outbox seq, the item; None: left by an earlier run, to decode)."""


class OutboxEnvelopeBus(EnvelopeBus):
    """The embedded default: the outbox, then the sink (see the module docstring)."""

    name = "in-process"
    dependency = "warehouse"

    def __init__(
        self,
        sink: DuckDBSink,
        outbox: Outbox,
        *,
        drain_interval: float = 1.0,
        drain_batch: int = 2_000,
        max_backlog: int = 200_000,
        close_sink: bool = True,
    ) -> None:
        self.sink = sink
        self.outbox = outbox
        self._interval = drain_interval
        self._batch = drain_batch
        self._max_backlog = max_backlog
        self._close_sink = close_sink
        self._appends: GroupCommit[Sequence[tuple[BusItem, bytes | None]], list[int]] = GroupCommit(
            self._append_all, error=_not_appended, then=self._appended
        )
        self._queued: _Part = []
        """In outbox order."""
        self._backlog = 0
        self._arrived = asyncio.Event()
        self._hurry = asyncio.Event()
        """Set by `stop` and by a full batch: cut the drain's pauses short."""
        self._drainer: asyncio.Task[None] | None = None
        self._closing = False
        self._failing: str | None = None
        """Why the last warehouse write failed, until one succeeds."""
        self.dead_letters = 0
        """Items the warehouse refused (dead-lettered) since start."""
        self._warehouse = CachedProbe(self._ping, ttl=1.5, timeout=5.0)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        left = await asyncio.to_thread(self.outbox.count)
        if left:
            log.info("outbox: %d item(s) left by an earlier run go to the warehouse first", left)
            self._queued = [(seq, None) for seq in await asyncio.to_thread(self.outbox.numbers)]
            self._backlog = len(self._queued)
            self._arrived.set()
        self._drainer = asyncio.create_task(self._drain_forever(), name="quietwire-outbox-drain")

    async def stop(self) -> None:
        """Drain everything published (the warehouse is complete when this returns,
        unless it is failing: then the rest stays in the outbox for the next start)."""
        await self._appends.idle()
        self._closing = True
        self._arrived.set()
        self._hurry.set()
        if self._drainer is not None:
            await self._drainer
        await asyncio.to_thread(self.outbox.close)
        if self._close_sink:
            await asyncio.to_thread(self.sink.close)

    # -- publishing ----------------------------------------------------------------

    async def publish(
        self, items: Sequence[BusItem], encoded: Sequence[bytes] | None = None
    ) -> None:
        if self._backlog >= self._max_backlog:
            raise BusUnavailable(
                f"the embedded warehouse is {self._backlog} items behind"
                + (f" ({self._failing})" if self._failing else "")
                + "; retry later"
            )
        values: Sequence[bytes | None] = [None] * len(items) if encoded is None else encoded
        await self._appends.submit(list(zip(items, values, strict=True)))

    def _append_all(self, batches: list[Sequence[tuple[BusItem, bytes | None]]]) -> list[list[int]]:
        # In the worker thread: serializing is CPU the event loop need not wait for.
        try:
            seqs = self.outbox.append(
                [
                    encode_item(item) if value is None else value
                    for batch in batches
                    for item, value in batch
                ]
            )
        except Exception:
            log.exception("outbox append failed")
            raise
        out: list[list[int]] = []
        for batch in batches:
            out.append(seqs[: len(batch)])
            seqs = seqs[len(batch) :]
        return out

    def _appended(
        self, batches: list[Sequence[tuple[BusItem, bytes | None]]], seqs: Sequence[list[int]]
    ) -> None:
        # On the event loop, before anyone is answered: queued even if every publisher
        # of the group has gone, so the drain takes them.
        for batch, numbers in zip(batches, seqs, strict=True):
            self._queued.extend(zip(numbers, (item for item, _ in batch), strict=True))
            self._backlog += len(batch)
        self._arrived.set()
        if len(self._queued) >= self._batch:
            self._hurry.set()

    # -- draining ------------------------------------------------------------------

    async def _drain_forever(self) -> None:
        delays = _BACKOFF.delays()
        failures = 0
        while True:
            if not self._queued:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if len(self._queued) < self._batch and not self._closing:
                # Let a batch gather: one DuckDB transaction for many requests' items.
                await self._pause(self._interval)
            part = self._queued[: self._batch]
            try:
                await self._store(part)
            except Exception as exc:
                failures += 1
                if failures % _ISOLATE_AFTER == 0 or self._closing:
                    try:
                        isolated = await asyncio.to_thread(self._isolate, part, exc)
                    except Exception as again:  # the warehouse failed under the search
                        isolated, exc = False, again
                    if isolated:
                        failures = 0
                        self._done(part)
                        continue
                self._failing = f"the warehouse did not commit: {exc}"
                if self._closing:
                    log.error(
                        "warehouse failing at shutdown: %d item(s) stay in the outbox for "
                        "the next start (%s)",
                        len(self._queued),
                        exc,
                    )
                    return
                log.exception("embedded warehouse write failed; retrying")
                await self._pause(next(delays))
                continue
            delays = _BACKOFF.delays()
            failures = 0
            self._done(part)
            # The stored items are released now: the queue is at its shortest, the
            # moment for the collector's pass (`ingest._process`; nothing if untuned).
            del part
            collect_garbage()

    def _done(self, part: _Part) -> None:
        self._failing = None
        del self._queued[: len(part)]
        self._backlog -= len(part)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if `stop` or a full batch cuts it short."""
        if self._closing:
            return
        self._hurry.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), seconds)

    async def _store(self, part: _Part) -> None:
        """Write `part` into the warehouse, then remove it from the outbox."""
        await asyncio.to_thread(self._write, part)
        await asyncio.to_thread(self.outbox.remove_through, part[-1][0])

    def _write(self, part: Sequence[tuple[int, BusItem | None]]) -> WriteResult:
        """Write `part` into the warehouse (blocking)."""
        known = [item for _, item in part if item is not None]
        if len(known) == len(part):
            result = self.sink.write(known)
        else:  # items an earlier run left: decode them (dead-lettering what does not)
            result = self.sink.store(self._messages(part), ())
        self.dead_letters += result.dead_letters
        return result

    def _isolate(self, part: _Part, error: Exception) -> bool:
        """After `part` failed again and again: look for the item that fails it.

        The sink dead-letters a row DuckDB refuses; any other error stops the batch. An
        item that fails with one while the items around it store (a bug a strange but
        valid envelope brings out) would hold every later item back for good, as it
        stays first in the outbox across restarts. So the part is written in halves
        (`ingest._salvage`): if some of it stores, the warehouse works, and each item
        that still fails alone becomes a dead letter, kept verbatim for an operator.
        If nothing stores, the warehouse itself is failing: nothing is dead-lettered,
        and the drain goes on retrying (blocking)."""
        saved = salvage(part, error, self._write, (Exception,))
        if not saved.written:
            return False
        stored = dict(self.outbox.read(len(part), after=part[0][0] - 1))
        letters: list[tuple[SinkMessage, BaseException]] = []
        for (seq, _), exc in saved.failed:
            log.error("outbox item %d fails alone (%s): dead-lettered", seq, exc)
            letters.append((self._message(seq, stored.get(seq)), exc))
        self.dead_letters += self.sink.dead_letter(letters).dead_letters
        self.outbox.remove_through(part[-1][0])
        return True

    @staticmethod
    def _message(seq: int, value: bytes | None) -> SinkMessage:
        return SinkMessage(OUTBOX_TOPIC, 0, seq, None, value)

    def _messages(self, part: Sequence[tuple[int, BusItem | None]]) -> list[SinkMessage]:
        """`part` as the outbox holds it (the bytes it was appended as), to decode."""
        stored = dict(self.outbox.read(len(part), after=part[0][0] - 1))
        return [self._message(seq, stored.get(seq)) for seq, _ in part]

    # -- health --------------------------------------------------------------------

    async def check(self) -> Check:
        return await self._warehouse.check()

    async def _ping(self) -> Check:
        drainer = self._drainer
        if drainer is not None and drainer.done() and not self._closing:
            # Only a bug ends the drain early (every write failure is retried): say so
            # rather than let the backlog grow unseen until requests are refused.
            error = None if drainer.cancelled() else drainer.exception()
            return Check(False, f"the outbox drain stopped: {error!r}")
        if self._failing is not None:
            return Check(False, f"{self._failing}; {self._backlog} item(s) wait in the outbox")
        await asyncio.to_thread(self.sink.ping)  # waits for a write in flight
        return Check(True, f"open; {self._backlog} item(s) wait in the outbox")


def _not_appended(exc: Exception) -> BaseException:
    return BusUnavailable(f"the outbox did not commit: {exc}")
