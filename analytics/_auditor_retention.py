"""A retention run as an auditor will read it: deleted, recorded, erased, logged.

`run_retention` deletes and records the run in the warehouse (`retention_runs`, in the
deleting transaction), then rewrites the file so the deleted values are physically gone
(`warehouse.compact`; it also completes deletions the sink applied and had not erased
yet). `retention_records` turns the run into the audit log's entries, one per tier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from auditlog import AuditRecord
from schemas import Tier
from warehouse import (
    Compaction,
    CompactionError,
    RetentionRun,
    apply_retention,
    apply_schema,
    compact,
    pending_erasures,
    retention_cutoff,
    rows_by_tier,
)

__all__ = ["RetentionOutcome", "retention_records", "run_retention"]


@dataclass(frozen=True, slots=True)
class RetentionOutcome:
    """What `run_retention` did."""

    run: RetentionRun
    kept: dict[str, int]
    """Rows left per tier, over the tables retention covers."""
    compaction: Compaction | None
    """The rewrite, or None: nothing awaited erasure, or it failed (`problem`)."""
    problem: str | None = None


def run_retention(
    conn: duckdb.DuckDBPyConnection, db: Path, days: Mapping[Tier, int], now: datetime
) -> RetentionOutcome:
    """Delete past retention and record it, then rewrite the file if any deletion awaits
    erasure. Closes `conn` (the file's only connection, opened writable).

    A failed rewrite is returned as `problem`, not raised: the deletion is committed and
    recorded, and its erasure stays pending for the next run.
    """
    apply_schema(conn)  # a file written before retention_runs and erasures existed
    run = apply_retention(conn, days, now)
    kept = rows_by_tier(conn)
    if not pending_erasures(conn):
        conn.close()
        return RetentionOutcome(run, kept, None)
    try:
        return RetentionOutcome(run, kept, compact(conn, db))
    except CompactionError as exc:
        if not exc.connection_closed:
            conn.close()
        return RetentionOutcome(run, kept, None, str(exc))


def retention_records(outcome: RetentionOutcome, db: Path) -> list[AuditRecord]:
    """The audit entries of a retention run: one per tier, with what it deleted (per
    table), the cutoff, the times, and when the deleted bytes left the file."""
    run, compaction = outcome.run, outcome.compaction
    if not run.total:
        erased = "erased=n/a"
    elif compaction is not None:
        erased = f"erased={compaction.compacted_at.isoformat()}"
    else:
        erased = "erased=pending"
    records = []
    for tier, tables in run.deleted.items():
        keep = run.days[tier]
        per_table = " ".join(f"{table}={n}" for table, n in tables.items())
        detail = (
            f"retention run {run.run_id} tier={tier} keep_days={keep} "
            f"cutoff={retention_cutoff(keep, run.as_of).isoformat()} "
            f"rows_deleted={sum(tables.values())} ({per_table}) "
            f"as_of={run.as_of.isoformat()} ran_at={run.ran_at.isoformat()} "
            f"{erased} warehouse={db}"
        )
        records.append(AuditRecord("retention", "applied", None, None, detail))
    return records
