"""The sink: verified envelopes into DuckDB, exactly once.

`DuckDBSink` is the one writer; both the embedded mode (`InProcessEnvelopeBus`) and the
Kafka consumer group (`KafkaSinkConsumer`) go through it, so the two modes store the same
rows. It calls `warehouse.write_envelopes`, which inserts a batch's rows and
the Kafka offsets that batch advances in one transaction and skips (device, envelope
id) pairs already stored. Deletion requests (`IngestedDeletionRequest`, on the same
topics) go through the same transaction: recorded in `deletion_requests`, and the
device's rows of that tier deleted.

Poison messages (a Kafka value that is not an `IngestedEnvelope`, which only a bug or a
foreign producer can cause) are logged, counted and recorded in the `dead_letters` table
of the same DuckDB file, keyed by (topic, partition, offset), before the batch's offsets
advance past them. That insert is its own idempotent transaction (INSERT OR IGNORE):
`write_envelopes` owns its transaction, and a crash between the two re-reads the message
and records it again as a no-op, so nothing vanishes and nothing doubles.

DuckDB calls block, so the consumer runs them in a worker thread (`asyncio.to_thread`);
a lock serialises them because one DuckDB connection must not run two transactions.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import TypeAdapter, ValidationError

from ingest._errors import BusUnavailable
from schemas import IngestedDeletionRequest, IngestedEnvelope
from warehouse import (
    Compaction,
    CompactionError,
    ErasureCompactor,
    PartitionOffset,
    WriteResult,
    connect,
    stored_offsets,
    write_envelopes,
)

__all__ = ["DEFAULT_SINK_GROUP", "DeadLetter", "DuckDBSink", "KafkaSinkConsumer", "SinkStats"]

log = logging.getLogger("quietwire.ingest.sink")

DEFAULT_SINK_GROUP = "quietwire-sink"

# Both models forbid extra keys, and one has `envelope` where the other has `deletion`,
# so a message parses as exactly one of them.
_MESSAGE: TypeAdapter[IngestedEnvelope | IngestedDeletionRequest] = TypeAdapter(
    IngestedEnvelope | IngestedDeletionRequest
)

_DEAD_LETTERS_DDL = """
CREATE TABLE IF NOT EXISTS dead_letters (
    topic           VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    BIGINT NOT NULL,
    consumer_group  VARCHAR NOT NULL,
    message_key     BLOB,
    message_value   BLOB,
    error           VARCHAR NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A Kafka message the sink could not parse, kept verbatim with the reason."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    error: str


class DuckDBSink:
    """Writes verified envelopes (and consumed offsets) into one DuckDB warehouse file.

    `target` is a path (opened, schema applied, closed by `close()`) or an open
    connection (the caller keeps ownership). Thread-safe: writes are serialised.

    With a path, the sink also makes deleted values physically absent: after applying
    deletion requests it rewrites the file (`warehouse.ErasureCompactor`), at most once
    per `compact_interval` seconds (later ones wait for the next write, idle poll or
    `close()`). With a connection, its owner must call `warehouse.compact`.
    """

    def __init__(
        self,
        target: Path | str | duckdb.DuckDBPyConnection,
        *,
        group: str = DEFAULT_SINK_GROUP,
        compact_interval: float = 300.0,
    ) -> None:
        self._compactor: ErasureCompactor | None = None
        if isinstance(target, duckdb.DuckDBPyConnection):
            self._conn = target
            self._owned = False
        else:
            self._conn = connect(target)
            self._owned = True
            self._compactor = ErasureCompactor(target, min_interval=compact_interval)
        self._conn.execute(_DEAD_LETTERS_DDL)
        self._lock = threading.Lock()
        self.group = group
        self._erase()  # deletions a crash left in the file

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The underlying connection, for read queries between writes."""
        return self._conn

    @contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, with this sink's writes held off until the block ends: for
        another writer of the same file in this process (the leader's aggregation job)."""
        with self._lock:
            yield self._conn

    def write(
        self,
        items: Sequence[IngestedEnvelope | IngestedDeletionRequest],
        offsets: Sequence[PartitionOffset] = (),
    ) -> WriteResult:
        """Store new envelopes, apply deletion requests and advance `offsets` (for this
        sink's group), atomically."""
        with self._lock:
            result = write_envelopes(
                self._conn, items, group=self.group if offsets else None, offsets=offsets
            )
            self._erase()
            return result

    def compact_if_due(self) -> Compaction | None:
        """Rewrite the file if deletions are pending and the interval has passed."""
        with self._lock:
            return self._erase()

    def _erase(self, *, force: bool = False) -> Compaction | None:
        # Under the lock (or in __init__). A failed rewrite is logged, not raised: the
        # rows are stored, and the erasure stays pending (visible to auditors) until
        # the next try.
        if self._compactor is None:
            return None
        try:
            self._conn, done = self._compactor.maybe_compact(self._conn, force=force)
        except CompactionError as exc:
            log.error("rewrite after deletions failed, will retry: %s", exc)
            if exc.connection_closed:
                self._conn = connect(self._compactor.path)
            return None
        if done is not None:
            log.info(
                "warehouse rewritten: %d erasures done, %d -> %d bytes",
                done.erasures,
                done.bytes_before,
                done.bytes_after,
            )
        return done

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Record unparseable messages; returns how many were new (a message re-read
        after a rebalance, before its offset was stored, is recorded once)."""
        if not letters:
            return 0
        now = datetime.now(UTC)
        with self._lock:
            before = self._dead_letter_rows()
            self._conn.executemany(
                "INSERT OR IGNORE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (d.topic, d.partition, d.offset, self.group, d.key, d.value, d.error, now)
                    for d in letters
                ],
            )
            return self._dead_letter_rows() - before

    def _dead_letter_rows(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM dead_letters").fetchone()
        return int(row[0]) if row else 0

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> next offset to read, as committed with this group's rows."""
        with self._lock:
            return stored_offsets(self._conn, self.group)

    def envelope_count(self) -> int:
        """How many envelopes the warehouse holds."""
        with self._lock:
            row = self._conn.execute("SELECT count(*) FROM envelopes").fetchone()
        return int(row[0]) if row else 0

    def dead_letter_count(self) -> int:
        """How many poison messages have been recorded."""
        with self._lock:
            return self._dead_letter_rows()

    def close(self) -> None:
        """Close the connection if this sink opened it."""
        if self._owned:
            with self._lock:
                self._erase(force=True)
                self._conn.close()


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

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Nothing to save: every processed batch already committed its offsets with its rows.
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
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
        log.info("sink assigned %s (resumed %d from the warehouse)", assigned, len(stored))


class KafkaSinkConsumer:
    """A consumer-group member that drains envelope topics into a `DuckDBSink`.

    Auto-commit is off: offsets live in DuckDB with the rows. With `commit_to_kafka`
    the same offsets are also committed to Kafka after each batch, for lag monitoring
    only (a failed monitoring commit is logged, never fatal).
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
    ) -> None:
        if not topics:
            raise ValueError("the sink needs at least one topic")
        self._sink = sink
        self._topics = list(topics)
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        self._commit_to_kafka = commit_to_kafka
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=sink.group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._stop_requested = asyncio.Event()
        self._loop_idle = asyncio.Event()
        self._loop_idle.set()
        self._started = False
        self.stats = SinkStats()

    async def start(self) -> None:
        """Connect and join the group (assignment completes on the first poll)."""
        self._stop_requested.clear()
        try:
            await self._consumer.start()
        except KafkaError as exc:
            await self._consumer.stop()  # a half-started consumer holds connections
            raise BusUnavailable(f"cannot connect the sink consumer: {exc}") from exc
        self._consumer.subscribe(
            self._topics, listener=_SeekToStoredOffsets(self._consumer, self._sink)
        )
        self._started = True

    async def stop(self) -> None:
        """Ask a running loop to finish its current batch, then leave the group."""
        self._stop_requested.set()
        # Let a running loop finish its batch (at most one poll timeout away): stopping
        # the consumer under an in-flight getmany would lose the batch's bookkeeping.
        await self._loop_idle.wait()
        if self._started:
            self._started = False
            await self._consumer.stop()

    async def __aenter__(self) -> KafkaSinkConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def poll_once(self) -> int:
        """Fetch one batch and store it (rows + offsets in one transaction); returns its size."""
        batches = await self._consumer.getmany(
            timeout_ms=self._poll_timeout_ms, max_records=self._max_records
        )
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
        items: list[IngestedEnvelope | IngestedDeletionRequest] = []
        dead: list[DeadLetter] = []
        offsets: list[PartitionOffset] = []
        for tp, records in batches.items():
            for rec in records:
                try:
                    if rec.value is None:
                        raise ValueError("message has no value")
                    items.append(_MESSAGE.validate_json(rec.value))
                except (ValidationError, ValueError) as exc:
                    dead.append(
                        DeadLetter(tp.topic, tp.partition, rec.offset, rec.key, rec.value, str(exc))
                    )
            offsets.append(PartitionOffset(tp.topic, tp.partition, records[-1].offset + 1))
        for d in dead:
            log.error(
                "dead letter %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.error.splitlines()[0]
            )
        # Dead letters first: once the offsets below commit, the message is never re-read.
        new_dead = await asyncio.to_thread(self._sink.write_dead_letters, dead)
        result = await asyncio.to_thread(self._sink.write, items, offsets)
        self.stats.messages += len(items) + len(dead)
        self.stats.inserted += result.inserted
        self.stats.duplicates += result.duplicates
        # Delivery is at least once (a rebalance can hand back a batch whose offsets were
        # not stored yet); the tables are idempotent, and so are these counts.
        self.stats.dead_letters += new_dead
        for o in offsets:
            self.stats.positions[(o.topic, o.partition)] = o.next_offset
        if self._commit_to_kafka:
            try:
                await self._consumer.commit(
                    {TopicPartition(o.topic, o.partition): o.next_offset for o in offsets}
                )
            except KafkaError as exc:
                log.warning("monitoring commit to Kafka failed (warehouse is unaffected): %s", exc)

    async def caught_up(self) -> bool:
        """True once partitions are assigned and every one is read to its end offset."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return False
        ends = await self._consumer.end_offsets(assigned)
        for tp in assigned:
            if await self._consumer.position(tp) < ends[tp]:
                return False
        return True

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
        end. With none given, runs until `stop()`.
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
