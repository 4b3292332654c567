"""The sink: verified envelopes into DuckDB, exactly once, and nothing stops it.

`DuckDBSink` is the one writer; both the embedded mode (`InProcessEnvelopeBus`) and the
Kafka consumer group (`KafkaSinkConsumer`) go through it, so the two modes store the same
rows. It calls `warehouse.write_envelopes`, which inserts a batch's rows and
the Kafka offsets that batch advances in one transaction and skips (device, envelope
id) pairs already stored. Deletion requests (`IngestedDeletionRequest`, on the same
topics) go through the same transaction: recorded in `deletion_requests`, and the
device's rows of that tier deleted.

Nothing a client sends can stop it. A Kafka message that does not decode, and an item
whose rows DuckDB refuses (`warehouse.UNSTORABLE`: a value out of a column's range, say),
becomes a dead letter (`warehouse.DeadLetter`, table `dead_letters`) with its bytes and
reason, and the rest of its batch is stored: a refused batch is split in halves until
each refusal is one item (`ingest._salvage`), the good halves committed as they go, then
the dead letters and the batch's offsets in one last transaction. Every write is
idempotent (rows by device and envelope id, deletions by request id, letters by
Kafka coordinates or content hash), so a crash in between replays the batch to the same
end. Any other warehouse error (I/O, a closed connection) propagates: the warehouse is
failing, not a row. Unless it keeps failing the same batch: then `store_isolating` (the
consumer calls it after retries) writes the batch in halves, and if some of it stores,
each message that still fails alone (a bug a strange but valid envelope brings out)
becomes a dead letter, so it cannot hold the partition back for good across restarts,
as the embedded outbox does (`OutboxEnvelopeBus._isolate`).

DuckDB calls block, so the consumer runs them in a worker thread (`asyncio.to_thread`);
a lock serialises them because one DuckDB connection must not run two transactions.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
from pydantic import TypeAdapter

from ingest._salvage import Salvage, salvage
from schemas import IngestedDeletionRequest, IngestedEnvelope
from warehouse import (
    UNSTORABLE,
    Compaction,
    CompactionError,
    DeadLetter,
    DeadLetterStage,
    ErasureCompactor,
    PartitionOffset,
    WriteResult,
    connect,
    describe_error,
    load_arrow_conversions,
    stored_offsets,
    write_envelopes,
)

__all__ = ["DEFAULT_SINK_GROUP", "DeadLetter", "DuckDBSink", "SinkItem", "SinkMessage"]

log = logging.getLogger("quietwire.ingest.sink")

DEFAULT_SINK_GROUP = "quietwire-sink"

SinkItem = IngestedEnvelope | IngestedDeletionRequest

# Both models forbid extra keys, and one has `envelope` where the other has `deletion`,
# so a message parses as exactly one of them.
_MESSAGE: TypeAdapter[SinkItem] = TypeAdapter(SinkItem)


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """A Kafka record as the sink reads it: where it is, and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class _Entry:
    """A decoded item, and the message it came in (None: handed over in-process)."""

    item: SinkItem
    message: SinkMessage | None


def _ids_in(value: bytes | None) -> tuple[str | None, str | None]:
    """(envelope id, device id) of a message that does not decode, if its JSON names them."""
    try:
        doc = json.loads(value or b"")
    except ValueError:
        return None, None
    head = doc.get("envelope", doc.get("deletion")) if isinstance(doc, dict) else None
    if not isinstance(head, dict):
        return None, None
    envelope_id, device_id = head.get("envelope_id"), head.get("device_id")
    return _short_str(envelope_id), _short_str(device_id)


def _short_str(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) <= 128 else None


def _letter(
    stage: DeadLetterStage, exc: BaseException, message: SinkMessage | None, item: SinkItem | None
) -> DeadLetter:
    """A dead letter for `item` (None: it did not decode) from `message` (None: handed
    over in-process, so kept as the JSON it would have travelled as on Kafka)."""
    error_class, error = describe_error(exc)
    if item is None:
        envelope_id, device_id = _ids_in(message.value if message is not None else None)
    elif isinstance(item, IngestedEnvelope):
        envelope_id, device_id = str(item.envelope.envelope_id), item.envelope.device_id
    else:
        envelope_id, device_id = None, item.deletion.device_id
    if message is None:
        assert item is not None
        assert device_id is not None
        return DeadLetter(
            stage,
            error_class,
            error,
            item.model_dump_json().encode(),
            key=device_id.encode(),
            envelope_id=envelope_id,
            device_id=device_id,
        )
    return DeadLetter(
        stage,
        error_class,
        error,
        message.value,
        key=message.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        envelope_id=envelope_id,
        device_id=device_id,
    )


def _sum(results: Sequence[WriteResult]) -> WriteResult:
    return WriteResult(
        inserted=sum(r.inserted for r in results),
        duplicates=sum(r.duplicates for r in results),
        deletions=sum(r.deletions for r in results),
        reports_refused=sum(r.reports_refused for r in results),
        dead_letters=sum(r.dead_letters for r in results),
    )


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
        self._lock = threading.Lock()
        self._closed = False
        self.group = group
        load_arrow_conversions()  # at start-up, not on the first batch
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
        self, items: Sequence[SinkItem], offsets: Sequence[PartitionOffset] = ()
    ) -> WriteResult:
        """Store new envelopes, apply deletion requests and advance `offsets` (for this
        sink's group); an item whose rows the warehouse refuses is dead-lettered and the
        others are stored. Raises only if the warehouse itself fails."""
        return self._write([_Entry(i, None) for i in items], offsets, [])

    def store(
        self, messages: Sequence[SinkMessage], offsets: Sequence[PartitionOffset]
    ) -> WriteResult:
        """Decode Kafka messages and `write` them with `offsets`; a message that does not
        decode is dead-lettered in the same transaction."""
        entries, letters = _decode(messages)
        return self._write(entries, offsets, letters)

    def store_isolating(
        self,
        messages: Sequence[SinkMessage],
        offsets: Sequence[PartitionOffset],
        error: Exception,
    ) -> WriteResult:
        """`store` for a batch that failed with `error` (not a refused row) again and
        again: the batch is written in halves (`ingest._salvage`). If some of it stores,
        the warehouse works, and each message that still fails alone is dead-lettered
        with its error, in the last transaction with the dead letters and `offsets` (a
        batch of one message: if that transaction commits). If none of several stores,
        the warehouse itself is failing: raises `error`, nothing dead-lettered."""
        entries, letters = _decode(messages)
        group = self.group if offsets else None
        with self._lock:
            saved = salvage(entries, error, self._write_part, (Exception,))
            if len(entries) > 1 and not saved.written:
                raise error
            for entry, exc in saved.failed:
                log.error(
                    "message %s fails every write alone (%s: %s)",
                    _coordinates(entry.message),
                    type(exc).__name__,
                    exc,
                )
            result, letters = self._finish_salvage(saved, letters, group, offsets)
            self._erase()
        _log_letters(letters)
        return result

    def _write(
        self,
        entries: Sequence[_Entry],
        offsets: Sequence[PartitionOffset],
        letters: Sequence[DeadLetter],
    ) -> WriteResult:
        group = self.group if offsets else None
        with self._lock:
            try:
                result = write_envelopes(
                    self._conn,
                    [e.item for e in entries],
                    group=group,
                    offsets=offsets,
                    dead_letters=letters,
                )
            except UNSTORABLE as exc:
                if not entries:
                    raise  # the letters or offsets themselves: not a row's fault
                log.warning(
                    "the warehouse refused a batch of %d (%s: %s): salvaging",
                    len(entries),
                    *describe_error(exc),
                )
                saved = salvage(entries, exc, self._write_part, UNSTORABLE)
                result, letters = self._finish_salvage(saved, letters, group, offsets)
            self._erase()
        _log_letters(letters)
        return result

    def dead_letter(self, failures: Sequence[tuple[SinkMessage, BaseException]]) -> WriteResult:
        """Record messages that cannot be stored, each with its error, as dead letters
        (stage `store`), without trying to store them."""
        letters = [_letter("store", exc, message, None) for message, exc in failures]
        with self._lock:
            return write_envelopes(self._conn, [], dead_letters=letters)

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

    def _finish_salvage(
        self,
        saved: Salvage[_Entry, WriteResult],
        letters: Sequence[DeadLetter],
        group: str | None,
        offsets: Sequence[PartitionOffset],
    ) -> tuple[WriteResult, list[DeadLetter]]:
        """After a salvage (under self._lock): the batch's dead letters, those it singled
        out added, and its offsets in one last transaction; the whole batch's result."""
        every = [*letters, *(_letter("store", err, e.message, e.item) for e, err in saved.failed)]
        last = write_envelopes(self._conn, [], group=group, offsets=offsets, dead_letters=every)
        return _sum([*saved.written, last]), every

    def _write_part(self, part: Sequence[_Entry]) -> WriteResult:
        # Under self._lock (called from _write): no offsets, so a crash before the last
        # transaction replays the batch, and these rows are then duplicates.
        return write_envelopes(self._conn, [e.item for e in part])

    def ping(self) -> None:
        """Raise unless the warehouse answers a query (for health checks)."""
        with self._lock:
            # fetchall, not fetchone: an open result would refuse the next relation.
            self._conn.execute("SELECT count(*) FROM consumer_offsets").fetchall()

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> next offset to read, as committed with this group's rows."""
        with self._lock:
            return stored_offsets(self._conn, self.group)

    def envelope_count(self) -> int:
        """How many envelopes the warehouse holds."""
        with self._lock:
            rows = self._conn.execute("SELECT count(*) FROM envelopes").fetchall()
        return int(rows[0][0])

    def dead_letter_count(self) -> int:
        """How many dead letters the warehouse holds."""
        with self._lock:
            rows = self._conn.execute("SELECT count(*) FROM dead_letters").fetchall()
        return int(rows[0][0])

    def close(self) -> None:
        """Close the connection if this sink opened it; safe to call twice."""
        if self._owned:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
                try:
                    self._erase(force=True)
                except duckdb.Error as exc:  # the file failed already: closing must not
                    log.error("no rewrite at close: %s", exc)
                finally:
                    self._conn.close()


def _decode(messages: Sequence[SinkMessage]) -> tuple[list[_Entry], list[DeadLetter]]:
    """Kafka messages as sink entries; one that does not decode as a dead letter."""
    entries: list[_Entry] = []
    letters: list[DeadLetter] = []
    for message in messages:
        try:
            if message.value is None:
                raise ValueError("message has no value")
            entries.append(_Entry(_MESSAGE.validate_json(message.value), message))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            letters.append(_letter("decode", exc, message, None))
    return entries, letters


def _coordinates(message: SinkMessage | None) -> str:
    if message is None:
        return "(in process)"
    return f"{message.topic}/{message.partition}@{message.offset}"


def _log_letters(letters: Sequence[DeadLetter]) -> None:
    for d in letters:
        where = d.letter_id if d.topic is not None else f"device {d.device_id}"
        log.error(
            "dead letter (%s) %s envelope %s: %s: %s",
            d.stage,
            where,
            d.envelope_id,
            d.error_class,
            d.error,
        )
