"""Dead letters: messages the sink could not store, kept verbatim with the reason.

A message ends here when it does not decode (not an `IngestedEnvelope` or
`IngestedDeletionRequest`: only a bug or a foreign producer makes one) or when the
warehouse refuses its rows (a value out of a column's range, say). Either way the rest
of its batch is stored and the pipeline moves on; an operator reads the table, fixes the
cause, and may re-send the message.

A letter's id makes recording it idempotent: a Kafka message is identified by (topic,
partition, offset), so a redelivery after a rebalance, or a replay by another group, is
recorded once; a message handed over in-process (embedded mode) has no offset and is
identified by the SHA-256 of its bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import duckdb
import pyarrow as pa

from warehouse._times import UnstorableValue

__all__ = [
    "UNSTORABLE",
    "DeadLetter",
    "DeadLetterStage",
    "describe_error",
    "insert_dead_letters",
    "upgrade_dead_letters",
]

UNSTORABLE: tuple[type[BaseException], ...] = (
    duckdb.DataError,  # conversion, out of range, type mismatch
    duckdb.IntegrityError,  # a constraint the row breaks
    duckdb.InvalidInputException,  # e.g. a string DuckDB cannot encode
    pa.ArrowException,  # a value the columnar insert cannot hold
    OverflowError,
    UnicodeError,
    UnstorableValue,  # e.g. a time it could not give back (warehouse._times)
)
"""Errors that mean "the warehouse cannot store this row", as opposed to "the warehouse
cannot store anything" (I/O, out of memory, a closed connection): the first kind is
dead-lettered, the second stops the writer."""

DeadLetterStage = Literal["decode", "store"]
"""decode: not a message the sink knows; store: the warehouse refused its rows."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message the sink could not store: its bytes, where it came from, and why.

    `value` is the Kafka message value as read, or (embedded mode) the item's JSON as it
    would have travelled on Kafka; `key` likewise (the device id). `topic`, `partition`
    and `offset` are set for a Kafka message; `envelope_id` and `device_id` when the
    message decoded far enough to name them.
    """

    stage: DeadLetterStage
    error_class: str
    error: str
    value: bytes | None
    key: bytes | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    envelope_id: str | None = None
    device_id: str | None = None

    @property
    def letter_id(self) -> str:
        """Stable across redeliveries: the Kafka coordinates, else the bytes' hash."""
        if self.topic is not None:
            return f"kafka:{self.topic}:{self.partition}:{self.offset}"
        return "sha256:" + hashlib.sha256(self.value or b"").hexdigest()


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(error class, message) for a letter: the message's first line only (DuckDB appends
    the offending SQL, which says nothing about the row)."""
    lines = str(exc).strip().splitlines()
    return type(exc).__name__, lines[0] if lines else ""


def insert_dead_letters(
    conn: duckdb.DuckDBPyConnection,
    letters: Sequence[DeadLetter],
    *,
    group: str | None,
    recorded_at: datetime,
) -> int:
    """Record `letters` inside the caller's transaction; returns how many were new."""
    if not letters:
        return 0
    ids = [d.letter_id for d in letters]
    known = {
        r[0]
        for r in conn.execute(
            "SELECT letter_id FROM dead_letters WHERE letter_id IN (SELECT unnest(?::VARCHAR[]))",
            [ids],
        ).fetchall()
    }
    fresh: dict[str, DeadLetter] = {}
    for letter_id, d in zip(ids, letters, strict=True):
        if letter_id not in known:
            fresh.setdefault(letter_id, d)
    if not fresh:
        return 0
    conn.executemany(
        "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                letter_id,
                d.stage,
                d.topic,
                d.partition,
                d.offset,
                group,
                d.key,
                d.value,
                d.envelope_id,
                d.device_id,
                d.error_class,
                d.error,
                recorded_at,
            )
            for letter_id, d in fresh.items()
        ],
    )
    return len(fresh)


def upgrade_dead_letters(conn: duckdb.DuckDBPyConnection, ddl: str) -> None:
    """Bring a `dead_letters` table of the first shape (written by the sink itself,
    Kafka decode failures only, keyed by topic/partition/offset) to the current one,
    rows kept; `ddl` creates the current table. A no-op on a current file."""
    columns = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'dead_letters'"
        ).fetchall()
    }
    if not columns or "letter_id" in columns:
        return
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute("ALTER TABLE dead_letters RENAME TO dead_letters_v0")
        conn.execute(ddl)
        # The first shape recorded only decode failures: a missing value (ValueError)
        # or a value that was not a message (pydantic's ValidationError).
        conn.execute(
            """INSERT INTO dead_letters
               SELECT 'kafka:' || topic || ':' || kafka_partition || ':' || kafka_offset,
                      'decode', topic, kafka_partition, kafka_offset, consumer_group,
                      message_key, message_value, NULL, NULL,
                      CASE WHEN message_value IS NULL THEN 'ValueError'
                           ELSE 'ValidationError' END,
                      error, recorded_at
               FROM dead_letters_v0"""
        )
        conn.execute("DROP TABLE dead_letters_v0")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
