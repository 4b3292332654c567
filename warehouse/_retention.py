"""Retention: each tier's data past its days is deleted (operators run it daily)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import duckdb

from schemas import Tier

__all__ = ["count_past_retention", "enforce_retention", "retention_cutoff", "rows_by_tier"]


def retention_cutoff(days: int, now: datetime) -> datetime:
    """Values whose window ended before this are past a retention of `days`."""
    return now - timedelta(days=days)


# What retention covers: (table, its time column). A fleet aggregate is kept as long
# as its tier's data; a Prio3 report (shares only) no longer than that either, and in
# practice far shorter (it is useless once its batch is collected).
_RETAINED = (
    ("released_values", "window_end"),
    ("fleet_aggregates", "window_end"),
    ("prio_reports", "batch_start"),
)


def _past_retention(
    conn: duckdb.DuckDBPyConnection, days: Mapping[Tier, int], now: datetime, verb: str
) -> dict[str, int]:
    out: dict[str, int] = {}
    for tier, keep in days.items():
        cutoff = retention_cutoff(keep, now)
        total = 0
        for table, column in _RETAINED:
            row = conn.execute(
                f"{verb} FROM {table} WHERE tier = ? AND {column} < ?",
                [Tier(tier).value, cutoff],
            ).fetchone()
            total += int(row[0]) if row else 0
        out[Tier(tier).value] = total
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
    return _past_retention(conn, days, now, "SELECT count(*)")


def enforce_retention(
    conn: duckdb.DuckDBPyConnection, days: Mapping[Tier, int], now: datetime
) -> dict[str, int]:
    """Delete each tier's data past its retention: released values and fleet aggregates
    whose window ended, and Prio3 reports whose batch started, more than the tier's days
    before `now`.

    `days` is the policy's `retention.days`; returns rows deleted per tier, in one
    transaction. The sink never calls this (a consumer that deletes would make a replay
    or a clock error destroy data): operators run `quietwire retention` daily.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        deleted = _past_retention(conn, days, now, "DELETE")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return deleted
