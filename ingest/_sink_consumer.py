"""The Kafka side of the sink: a consumer-group member draining envelope topics into a
`DuckDBSink`.

Offsets live in DuckDB with the rows (see `ingest._sink`); on assignment each partition
resumes where the warehouse says. `start_when_reachable` waits, with backoff and a log
line per attempt, for a broker that is not up yet. Once consuming, a broker that goes
away is waited out by aiokafka (polls come back empty until it returns); any other
failure (the warehouse failing, an error Kafka will not retry, a bug) propagates out of
`run_until` and is never swallowed, so the process around it can exit with the reason
(`ingest._sink_service`). A batch whose store fails is tried `STORE_ATTEMPTS` times,
then written message by message where it must (`DuckDBSink.store_isolating`): one
message that fails every write is dead-lettered rather than stop its partition at
every restart. aiokafka logs and swallows an exception raised in a rebalance
listener; ours keeps it, and the next poll raises it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from ingest._backoff import Backoff
from ingest._errors import BusUnavailable
from ingest._health import Check
from ingest._sink import DuckDBSink, SinkMessage
from warehouse import PartitionOffset, WriteResult

__all__ = ["STORE_ATTEMPTS", "KafkaSinkConsumer", "SinkStats"]

log = logging.getLogger("quietwire.ingest.sink")

STORE_ATTEMPTS = 3
"""Tries of a failing batch before it is written in halves to single out a message."""


@dataclass(slots=True)
class SinkStats:
    """What a `KafkaSinkConsumer` has done so far; `run_until` predicates read it."""

    polls: int = 0
    messages: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    empty_polls_in_a_row: int = 0
    positions: dict[tuple[str, int], int] = field(default_factory=dict)


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, resume each partition where the warehouse says, else from the start.

    The warehouse, not Kafka's committed offsets, is the source of truth: its offsets
    were written in the same transaction as the rows.
    """

    def __init__(self, consumer: AIOKafkaConsumer, sink: DuckDBSink) -> None:
        self._consumer = consumer
        self._sink = sink
        self.failure: BaseException | None = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Nothing to save: every processed batch already committed its offsets with its rows.
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            stored = await asyncio.to_thread(self._sink.stored_offsets)
            fresh = []
            for tp in assigned:
                offset = stored.get((tp.topic, tp.partition))
                if offset is None:
                    fresh.append(tp)
                else:
                    self._consumer.seek(tp, offset)
            if fresh:
                await self._consumer.seek_to_beginning(*fresh)
        except Exception as exc:
            # aiokafka would log this and consume from wherever it stood: keep it for
            # the next poll to raise instead.
            self.failure = exc
            return
        log.info("sink assigned %s (resumed %d from the warehouse)", assigned, len(stored))


class KafkaSinkConsumer:
    """A consumer-group member that drains envelope topics into a `DuckDBSink`.

    Auto-commit is off: offsets live in DuckDB with the rows. With `commit_to_kafka`
    the same offsets are also committed to Kafka after each batch, for lag monitoring
    only (a failed monitoring commit is logged, never fatal). `metadata_max_age_ms`
    bounds how long a subscribed topic that does not exist yet stays unnoticed once
    it is created.
    """

    def __init__(
        self,
        sink: DuckDBSink,
        *,
        bootstrap_servers: str,
        topics: Sequence[str],
        max_records: int = 500,
        poll_timeout_ms: int = 1000,
        commit_to_kafka: bool = True,
        client_id: str = "quietwire-sink",
        metadata_max_age_ms: int = 30_000,
        retry_pause: float = 1.0,
    ) -> None:
        """`retry_pause`: seconds before the second try of a failing batch (twice that
        before the third)."""
        if not topics:
            raise ValueError("the sink needs at least one topic")
        self._sink = sink
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._topics = list(topics)
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        self._commit_to_kafka = commit_to_kafka
        self._metadata_max_age_ms = metadata_max_age_ms
        self._retry_pause = retry_pause
        # Made by `start`: an aiokafka consumer that is never started warns when collected,
        # and one that failed to start cannot start again.
        self._consumer: AIOKafkaConsumer | None = None
        self._listener: _SeekToStoredOffsets | None = None
        self._stop_requested = asyncio.Event()
        self._loop_idle = asyncio.Event()
        self._loop_idle.set()
        self._started = False
        self.stats = SinkStats()

    @property
    def topics(self) -> list[str]:
        """The topics this member subscribes to."""
        return list(self._topics)

    @property
    def started(self) -> bool:
        """Connected and subscribed (a `start` succeeded, no `stop` since)."""
        return self._started

    @property
    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None or not self._started:
            raise RuntimeError("the sink consumer is not started")
        return self._consumer

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=self._sink.group,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # How soon a topic created after the sink subscribed is seen (Kafka's
            # default, 5 minutes, would leave such a topic unread that long).
            metadata_max_age_ms=self._metadata_max_age_ms,
        )

    async def start(self) -> None:
        """Connect and join the group (assignment completes on the first poll); raises
        `BusUnavailable` if no broker answers."""
        self._stop_requested.clear()
        consumer = self._new_consumer()
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()  # a half-started consumer holds connections
            raise BusUnavailable(f"cannot connect the sink consumer: {exc}") from exc
        self._consumer = consumer
        self._listener = _SeekToStoredOffsets(consumer, self._sink)
        consumer.subscribe(self._topics, listener=self._listener)
        self._started = True

    async def start_when_reachable(self, stopping: asyncio.Event, backoff: Backoff) -> bool:
        """`start`, retrying with `backoff` (and a warning per attempt) while no broker
        answers. False if `stopping` was set before a broker answered."""
        for attempt, delay in enumerate(backoff.delays(), start=1):
            if stopping.is_set():
                return False
            try:
                await self.start()
                if attempt > 1:
                    log.info("Kafka at %s reachable after %d attempts", self._bootstrap, attempt)
                return True
            except BusUnavailable as exc:
                log.warning(
                    "waiting for Kafka at %s (attempt %d): %s; next try in %.1fs",
                    self._bootstrap,
                    attempt,
                    exc.detail,
                    delay,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
        raise AssertionError("unreachable: the backoff is endless")

    async def stop(self) -> None:
        """Ask a running loop to finish its current batch, then leave the group."""
        self._stop_requested.set()
        # Let a running loop finish its batch (at most one poll timeout away): stopping
        # the consumer under an in-flight getmany would lose the batch's bookkeeping.
        await self._loop_idle.wait()
        if self._started and self._consumer is not None:
            self._started = False
            await self._consumer.stop()

    async def __aenter__(self) -> KafkaSinkConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def poll_once(self) -> int:
        """Fetch one batch and store it (rows + offsets in one transaction); returns its size."""
        batches = await self._live.getmany(
            timeout_ms=self._poll_timeout_ms, max_records=self._max_records
        )
        if self._listener is not None and self._listener.failure is not None:
            raise self._listener.failure
        self.stats.polls += 1
        count = sum(len(records) for records in batches.values())
        if count == 0:
            self.stats.empty_polls_in_a_row += 1
            await asyncio.to_thread(self._sink.compact_if_due)
            return 0
        self.stats.empty_polls_in_a_row = 0
        await self._store(batches)
        return count

    async def _store(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> None:
        messages = [
            SinkMessage(tp.topic, tp.partition, rec.offset, rec.key, rec.value)
            for tp, records in batches.items()
            for rec in records
        ]
        offsets = [
            PartitionOffset(tp.topic, tp.partition, records[-1].offset + 1)
            for tp, records in batches.items()
            if records
        ]
        result = await self._store_retrying(messages, offsets)
        # Delivery is at least once (a rebalance can hand back a batch whose offsets were
        # not stored yet); the tables are idempotent, and so are these counts.
        self.stats.messages += len(messages)
        self.stats.inserted += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.dead_letters += result.dead_letters
        for o in offsets:
            self.stats.positions[(o.topic, o.partition)] = o.next_offset
        if self._commit_to_kafka:
            try:
                await self._live.commit(
                    {TopicPartition(o.topic, o.partition): o.next_offset for o in offsets}
                )
            except KafkaError as exc:
                log.warning("monitoring commit to Kafka failed (warehouse is unaffected): %s", exc)

    async def _store_retrying(
        self, messages: Sequence[SinkMessage], offsets: Sequence[PartitionOffset]
    ) -> WriteResult:
        """`DuckDBSink.store`, tried `STORE_ATTEMPTS` times (a warehouse hiccup passes);
        then `store_isolating`, so a message that fails every write (not a row DuckDB
        refuses: those are dead-lettered at once) is dead-lettered instead of failing its
        batch at every restart from the same offsets, while a warehouse that takes no
        write at all still raises (and the sink exits saying why)."""
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                return await asyncio.to_thread(self._sink.store, messages, offsets)
            except Exception as exc:
                log.warning(
                    "storing a batch of %d failed (attempt %d of %d): %s: %s",
                    len(messages),
                    attempt,
                    STORE_ATTEMPTS,
                    type(exc).__name__,
                    exc,
                )
                if attempt == STORE_ATTEMPTS:
                    return await asyncio.to_thread(
                        self._sink.store_isolating, messages, offsets, exc
                    )
                await asyncio.sleep(self._retry_pause * attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def caught_up(self) -> bool:
        """True once partitions are assigned and every one is read to its end offset."""
        consumer = self._live
        assigned = list(consumer.assignment())
        if not assigned:
            return False
        ends = await consumer.end_offsets(assigned)
        for tp in assigned:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True

    async def reachable(self) -> Check:
        """Whether a broker answers a metadata request (a health probe: bound it)."""
        if not self._started:
            return Check(False, f"not connected to {self._bootstrap} yet")
        topics = await self._live.topics()
        missing = sorted(set(self._topics) - set(topics))
        if missing:
            return Check(False, f"topics missing on the broker: {', '.join(missing)}")
        return Check(True, f"connected to {self._bootstrap}")

    async def lag(self) -> dict[tuple[str, int], int] | None:
        """Per assigned partition: the end offset minus the offset the warehouse stored
        (messages not yet stored). None before the group assigned any partition."""
        if not self._started:
            return None
        consumer = self._live
        assigned = list(consumer.assignment())
        if not assigned:
            return None
        ends = await consumer.end_offsets(assigned)
        stored = await asyncio.to_thread(self._sink.stored_offsets)
        unread = [tp for tp in assigned if (tp.topic, tp.partition) not in stored]
        starts = await consumer.beginning_offsets(unread) if unread else {}
        return {
            (tp.topic, tp.partition): max(
                0, ends[tp] - stored.get((tp.topic, tp.partition), starts.get(tp, 0))
            )
            for tp in assigned
        }

    async def run_until(
        self,
        predicate: Callable[[SinkStats], bool] | None = None,
        *,
        idle_polls: int | None = None,
        caught_up: bool = False,
    ) -> SinkStats:
        """Poll and store until a condition holds, or until `stop()` is called.

        Conditions (any one ends the run): `predicate(stats)` is true; `idle_polls`
        empty polls in a row; with `caught_up`, every assigned partition is read to its
        end. With none given, runs until `stop()`. Any failure propagates.
        """
        self._loop_idle.clear()
        try:
            while not self._stop_requested.is_set():
                await self.poll_once()
                if predicate is not None and predicate(self.stats):
                    break
                if idle_polls is not None and self.stats.empty_polls_in_a_row >= idle_polls:
                    break
                if caught_up and await self.caught_up():
                    break
        finally:
            self._loop_idle.set()
        return self.stats
