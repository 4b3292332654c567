"""Retention: each tier's data past its days is deleted (operators run it daily).

Every run that deletes is recorded in the same transaction: per tier and table in
`retention_runs` (rows, cutoff, when) and, if it deleted rows, as a pending erasure
(`erasures`) that the next rewrite of the file (`warehouse.compact`) completes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from schemas import Tier
from warehouse._compact import record_erasure

__all__ = [
    "RETENTION_TABLES",
    "RetentionRun",
    "apply_retention",
    "count_past_retention",
    "enforce_retention",
    "retention_cutoff",
    "rows_by_tier",
]


def retention_cutoff(days: int, now: datetime) -> datetime:
    """Values whose window ended before this are past a retention of `days`."""
    return now - timedelta(days=days)


# What retention covers: (table, the time column its cutoff applies to). A fleet
# aggregate is kept as long as its tier's data; a Prio3 report (shares only) no longer
# than that either, and in practice far shorter (useless once its batch is collected).
# Dead letters (no tier) are kept as long as the shortest-kept tier (`_past_retention`).
RETENTION_TABLES: tuple[tuple[str, str], ...] = (
    ("released_values", "window_end"),
    ("fleet_aggregates", "window_end"),
    ("prio_reports", "batch_start"),
)
_RETAINED = RETENTION_TABLES


@dataclass(frozen=True, slots=True)
class RetentionRun:
    """What one `apply_retention` deleted, as recorded in `retention_runs`."""

    run_id: str
    ran_at: datetime
    as_of: datetime
    """The reference time cutoffs count back from (`--now`)."""
    days: dict[str, int]
    """Days kept per tier."""
    deleted: dict[str, dict[str, int]]
    """tier -> table -> rows deleted."""

    @property
    def by_tier(self) -> dict[str, int]:
        """Rows deleted per tier, over every table."""
        return {tier: sum(tables.values()) for tier, tables in self.deleted.items()}

    @property
    def total(self) -> int:
        """Rows deleted in all."""
        return sum(self.by_tier.values())


def _past_retention(
    conn: duckdb.DuckDBPyConnection, days: Mapping[Tier, int], now: datetime, verb: str
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for tier, keep in days.items():
        cutoff = retention_cutoff(keep, now)
        per_table: dict[str, int] = {}
        for table, column in _RETAINED:
            # fetchall: an unfinished result would block a caller's next relation.
            ((n,),) = conn.execute(
                f"{verb} FROM {table} WHERE tier = ? AND {column} < ?",
                [Tier(tier).value, cutoff],
            ).fetchall()
            per_table[table] = int(n)
        out[Tier(tier).value] = per_table
    if days:
        # Dead letters have no tier (their bytes did not decode or store) and may hold
        # any tier's data: they are kept no longer than the shortest-kept tier, and
        # counted under it.
        tier, keep = min(((Tier(t), k) for t, k in days.items()), key=lambda tk: tk[1])
        ((n,),) = conn.execute(
            f"{verb} FROM dead_letters WHERE recorded_at < ?", [retention_cutoff(keep, now)]
        ).fetchall()
        out[tier.value]["dead_letters"] = int(n)
    return out


def rows_by_tier(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rows per tier of everything retention covers (values, aggregates, reports)."""
    out: dict[str, int] = {}
    for table, _ in _RETAINED:
        for tier, n in conn.execute(f"SELECT tier, count(*) FROM {table} GROUP BY tier").fetchall():
            out[str(tier)] = out.get(str(tier), 0) + int(n)
    return out


def count_past_retention(
    conn: duckdb.DuckDBPyConnection, days: Mapping[Tier, int], now: datetime
) -> dict[str, int]:
    """Rows per tier that `enforce_retention(conn, days, now)` would delete (a dry run)."""
    counts = _past_retention(conn, days, now, "SELECT count(*)")
    return {tier: sum(tables.values()) for tier, tables in counts.items()}


def apply_retention(
    conn: duckdb.DuckDBPyConnection,
    days: Mapping[Tier, int],
    now: datetime,
    *,
    ran_at: datetime | None = None,
) -> RetentionRun:
    """Delete each tier's data past its retention: released values and fleet aggregates
    whose window ended, and Prio3 reports whose batch started, more than the tier's days
    before `now`; record the run (`retention_runs`, `erasures`) in the same transaction.

    `days` is the policy's `retention.days`. The deleted bytes leave the file only when
    it is rewritten: call `warehouse.compact` after a run that deleted rows. The sink
    never calls this (a consumer that deletes would make a replay or a clock error
    destroy data): operators run `quietwire retention` daily.
    """
    run_id = str(uuid.uuid4())
    ran = ran_at or datetime.now(UTC)
    conn.execute("BEGIN TRANSACTION")
    try:
        deleted = _past_retention(conn, days, now, "DELETE")
        conn.executemany(
            "INSERT INTO retention_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (run_id, ran, now, tier.value, keep, retention_cutoff(keep, now), table, n)
                for tier, keep in ((Tier(t), k) for t, k in days.items())
                for table, n in deleted[tier.value].items()
            ],
        )
        total = sum(n for tables in deleted.values() for n in tables.values())
        if total:
            record_erasure(conn, "retention", run_id, total, ran)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return RetentionRun(run_id, ran, now, {Tier(t).value: k for t, k in days.items()}, deleted)


def enforce_retention(
    conn: duckdb.DuckDBPyConnection, days: Mapping[Tier, int], now: datetime
) -> dict[str, int]:
    """`apply_retention`, returning the rows deleted per tier."""
    return apply_retention(conn, days, now).by_tier
