"""What someone who controls the ingest's host can do to its audit log file."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from auditlog import GENESIS_HASH, AuditEntry, entry_hash


def rewrite_chain(path: Path, seq: int, detail: str) -> None:
    """Edit entry `seq`'s detail and recompute every hash from there: the chain alone
    verifies again."""
    db = sqlite3.connect(path)
    with db:
        rows = [AuditEntry(*r) for r in db.execute("SELECT * FROM audit ORDER BY seq")]
        head = GENESIS_HASH
        for e in rows:
            if e.seq == seq:
                e = dataclasses.replace(e, detail=detail)
            digest = entry_hash(e.seq, e.at, e, head)
            db.execute(
                "UPDATE audit SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (e.detail, head, digest, e.seq),
            )
            head = digest
    db.close()


def execute(path: Path, sql: str, *args: object) -> None:
    """Run one statement on the log file, as its host could."""
    db = sqlite3.connect(path)
    with db:
        db.execute(sql, args)
    db.close()
