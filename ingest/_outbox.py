"""The embedded ingest's outbox: a durable queue between the answer and the warehouse.

With the embedded sink, what makes a 202 safe to give is that the envelopes are on
disk, not that DuckDB has them in its tables. A DuckDB transaction costs milliseconds
of CPU however few rows it holds (about 7.5 ms on the benchmark machine, against 56 µs
per row), so committing one per group of requests made the warehouse most of the
ingest's CPU. The outbox is what Kafka is in the other mode: `append` makes a group of
serialized bus items durable in one SQLite transaction (WAL, ``synchronous=FULL``: on
disk when it returns), and `ingest._outbox_bus.OutboxEnvelopeBus` moves them into the
warehouse in large batches behind the answers, removing them once DuckDB committed.

A crash between the DuckDB commit and the removal replays those items, which the sink
skips by (device, envelope id) and deletion request id, so every item reaches the
warehouse exactly once. Items are kept in the order they were appended (a device's
deletion request stays behind its earlier envelopes).

One file, `state_dir/outbox.sqlite3`, for one ingest process: replicas each have their
own (docs/ingest.md, "Deployment: what replicas share"). Thread-safe.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from ingest._errors import ConfigurationError
from ingest._sqlite import immediate, open_durable

__all__ = ["Outbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    item BLOB NOT NULL
);
"""


class Outbox:
    """Serialized bus items, durable and in order, until the warehouse holds them."""

    FILE_NAME = "outbox.sqlite3"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = open_durable(self.path, _SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(f"outbox {self.path}: {exc}") from exc

    def append(self, items: Sequence[bytes]) -> list[int]:
        """Store `items` durably in one transaction; their sequence numbers, in order.
        Raises `sqlite3.Error` (nothing stored) if the file cannot be written."""
        if not items:
            return []
        with self._lock, immediate(self._db):  # a failed COMMIT is the error raised
            last = self._last_seq()
            self._db.executemany(
                "INSERT INTO outbox (seq, item) VALUES (?, ?)",
                [(last + i, item) for i, item in enumerate(items, start=1)],
            )
        return list(range(last + 1, last + 1 + len(items)))

    def _last_seq(self) -> int:
        # Never reuse a removed item's number (AUTOINCREMENT keeps the high-water mark).
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        top = self._db.execute("SELECT max(seq) FROM outbox").fetchone()
        return max(int(row[0]) if row else 0, int(top[0]) if top and top[0] is not None else 0)

    def read(self, limit: int, *, after: int = 0) -> list[tuple[int, bytes]]:
        """Up to `limit` items with a sequence number above `after`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, item FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [(int(seq), bytes(item)) for seq, item in rows]

    def remove_through(self, seq: int) -> None:
        """Forget every item up to and including `seq` (the warehouse holds them)."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def count(self) -> int:
        """How many items wait for the warehouse."""
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the file; safe to call twice."""
        with self._lock:
            self._db.close()
