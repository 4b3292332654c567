"""The ingest's durable SQLite files: one way to open them, one way to write them.

The device ledger, the embedded outbox, the device registry and the helper's state all
answer a client only after their transaction is on disk, so each is opened the same way:
autocommit (the callers run their own `BEGIN IMMEDIATE` ... `COMMIT`), WAL, and
``synchronous=FULL`` (a commit is durable when it returns, power loss included), shared
across threads behind the caller's lock, waiting up to 10 s for another writer's lock.

`immediate` is that transaction for callers that spell it out: when anything in it
fails, COMMIT included, the error the caller sees is that failure, not a rollback's.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["immediate", "open_durable", "roll_back_open"]

log = logging.getLogger(__name__)


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


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` before the block, ``COMMIT`` after it; if either the block or
    the COMMIT raises, what is still open is rolled back (`roll_back_open`) and that
    exception propagates unchanged. A failing BEGIN raises as is (nothing to undo)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        roll_back_open(db)
        raise


def roll_back_open(db: sqlite3.Connection) -> None:
    """Roll back `db`'s transaction if one is still open; never raises.

    For the error path of a transaction, where the error being handled is the one to
    report: SQLite rolls back by itself when some failures end a statement (a full
    disk, an I/O error, a failed COMMIT among them), and a ROLLBACK then raises "cannot
    rollback - no transaction is active", which would replace the real cause. A
    ROLLBACK that fails all the same is logged, not raised.
    """
    if not db.in_transaction:
        return
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("rollback failed (the transaction's own error is the one raised)")
