"""The ingest's durable SQLite files: one way to open them.

The device ledger, the embedded outbox, the device registry and the helper's state all
answer a client only after their transaction is on disk, so each is opened the same way:
autocommit (the callers run their own `BEGIN IMMEDIATE` ... `COMMIT`), WAL, and
``synchronous=FULL`` (a commit is durable when it returns, power loss included), shared
across threads behind the caller's lock, waiting up to 10 s for another writer's lock.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["open_durable"]


def open_durable(path: Path, schema: str) -> sqlite3.Connection:
    """Open (creating it and its directory if needed) the SQLite file at `path` and
    apply `schema` (idempotent DDL). Raises `OSError` or `sqlite3.Error`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db
