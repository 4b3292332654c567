"""A SQLite connection that fails as a full disk does, for the ingest's commit paths."""

from __future__ import annotations

import sqlite3
from typing import Any

__all__ = ["CommitFailsAsOnAFullDisk"]


class CommitFailsAsOnAFullDisk:
    """Wraps a connection; its next COMMIT fails as on a full disk: by the time the
    error reaches the caller, SQLite has already rolled the transaction back."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.failures = 1

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.failures > 0:
            self.failures -= 1
            self._db.execute("ROLLBACK")  # what SQLite does on SQLITE_FULL at COMMIT
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)
