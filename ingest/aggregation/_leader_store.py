"""The leader's reads and writes of the warehouse: pending reports, batches, results.

Functions on a DuckDB connection the caller holds (under `DuckDBSink.locked()`, so the
sink's writes and these never interleave on the one connection). The sink only inserts
pending reports; everything that changes a report's status or a batch is here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb

from ingest.aggregation._batches import BatchKey

__all__ = [
    "LeaderBatch",
    "PendingReport",
    "SinkRejection",
    "assign_job",
    "batches_to_collect",
    "insert_fleet_rows",
    "leader_batch",
    "mark_collected",
    "mark_rejections_audited",
    "pending_batches",
    "pending_count",
    "pending_reports",
    "revealed",
    "save_batch",
    "save_noisy_share",
    "set_batch_status",
    "set_outcomes",
    "transaction",
    "unaudited_rejections",
]

_ROWS_PER_INSERT = 256
_KEY_WHERE = "policy_hash = ? AND task = ? AND region = ? AND batch_start = ?"


def _key_args(key: BatchKey) -> list[Any]:
    return [key.policy_hash, key.task, key.region, key.batch_start]


@dataclass(frozen=True, slots=True)
class PendingReport:
    """A report the leader has not aggregated nor rejected yet."""

    report_id: bytes
    device_id: str
    public_share: bytes
    leader_share: bytes
    helper_share: bytes
    job_id: str | None
    """The job it was sent in (stored before sending), or None if not sent yet."""


@dataclass(frozen=True, slots=True)
class LeaderBatch:
    """The leader's side of a batch. status: open | below_minimum | collecting | collected."""

    key: BatchKey
    aggregate_share: bytes
    reports: int
    checksum: bytes
    status: str
    noisy_share: bytes | None = None
    noise_scale: float | None = None


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _key_of(row: Sequence[Any]) -> BatchKey:
    return BatchKey(str(row[0]), str(row[1]), str(row[2]), row[3].astimezone(UTC))


def pending_batches(conn: duckdb.DuckDBPyConnection) -> list[BatchKey]:
    """Batches holding pending reports, oldest first."""
    rows = conn.execute(
        "SELECT DISTINCT policy_hash, task, region, batch_start FROM prio_reports "
        "WHERE status = 'pending' ORDER BY batch_start, task, region, policy_hash"
    ).fetchall()
    return [_key_of(r) for r in rows]


def pending_reports(
    conn: duckdb.DuckDBPyConnection, key: BatchKey, *, assigned: bool, limit: int | None = None
) -> list[PendingReport]:
    """The batch's pending reports already sent in a job (`assigned`) or not yet."""
    sql = (
        "SELECT r.report_id, r.device_id, r.public_share, r.leader_share, r.helper_share, "
        "j.job_id FROM prio_reports r LEFT JOIN prio_job_reports j "
        "ON j.task = r.task AND j.report_id = r.report_id "
        "WHERE r.status = 'pending' AND r.policy_hash = ? AND r.task = ? AND r.region = ? "
        "AND r.batch_start = ? AND j.job_id IS " + ("NOT NULL" if assigned else "NULL")
    )
    sql += " ORDER BY j.job_id, r.report_id" if assigned else " ORDER BY r.report_id"
    args = _key_args(key)
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [
        PendingReport(bytes(r[0]), str(r[1]), bytes(r[2]), bytes(r[3]), bytes(r[4]), r[5])
        for r in conn.execute(sql, args).fetchall()
    ]


def pending_count(conn: duckdb.DuckDBPyConnection, key: BatchKey) -> int:
    """How many of the batch's reports are still pending."""
    row = conn.execute(
        f"SELECT count(*) FROM prio_reports WHERE status = 'pending' AND {_KEY_WHERE}",
        _key_args(key),
    ).fetchone()
    return int(row[0]) if row else 0


def assign_job(
    conn: duckdb.DuckDBPyConnection, key: BatchKey, job_id: str, report_ids: Sequence[bytes]
) -> None:
    """Record that these reports go out in `job_id` (before it is sent)."""
    # One statement over an array: DuckDB's executemany runs one statement per row.
    conn.execute(
        "INSERT INTO prio_job_reports SELECT ?, unnest(?::BLOB[]), ?",
        [key.task, list(report_ids), job_id],
    )


def set_outcomes(
    conn: duckdb.DuckDBPyConnection,
    task: str,
    aggregated: Sequence[bytes],
    rejected: Sequence[tuple[bytes, str]],
) -> None:
    """Mark reports aggregated, or rejected with their reasons."""
    groups: dict[tuple[str, str | None], list[bytes]] = defaultdict(list)
    for rid in aggregated:
        groups[("aggregated", None)].append(rid)
    for rid, why in rejected:
        groups[("rejected", why)].append(rid)
    for (status, reason), ids in groups.items():
        conn.execute(
            "UPDATE prio_reports SET status = ?, reason = ? WHERE task = ? AND status = 'pending' "
            "AND report_id IN (SELECT unnest(?::BLOB[]))",
            [status, reason, task, ids],
        )


def leader_batch(conn: duckdb.DuckDBPyConnection, key: BatchKey) -> LeaderBatch | None:
    """The leader's batch row, or None before its first aggregated job."""
    row = conn.execute(
        "SELECT aggregate_share, reports, checksum, status, noisy_share, noise_scale "
        f"FROM prio_batches WHERE {_KEY_WHERE}",
        _key_args(key),
    ).fetchone()
    if row is None:
        return None
    noisy = None if row[4] is None else bytes(row[4])
    return LeaderBatch(key, bytes(row[0]), int(row[1]), bytes(row[2]), str(row[3]), noisy, row[5])


def save_batch(conn: duckdb.DuckDBPyConnection, batch: LeaderBatch) -> None:
    """Insert or update the batch's aggregate share, count, checksum and status."""
    key = batch.key
    conn.execute(
        "INSERT INTO prio_batches (task, policy_hash, region, batch_start, batch_id, "
        "aggregate_share, reports, checksum, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (task, policy_hash, region, batch_start) DO UPDATE SET "
        "aggregate_share = excluded.aggregate_share, reports = excluded.reports, "
        "checksum = excluded.checksum, status = excluded.status",
        [
            key.task,
            key.policy_hash,
            key.region,
            key.batch_start,
            key.batch_id,
            batch.aggregate_share,
            batch.reports,
            batch.checksum,
            batch.status,
        ],
    )


def set_batch_status(conn: duckdb.DuckDBPyConnection, key: BatchKey, status: str) -> None:
    """Change a batch's status (open <-> below_minimum)."""
    conn.execute(
        f"UPDATE prio_batches SET status = ? WHERE {_KEY_WHERE}", [status, *_key_args(key)]
    )


def save_noisy_share(
    conn: duckdb.DuckDBPyConnection, key: BatchKey, noisy_share: bytes, scale: float
) -> None:
    """Store the leader's noisy share (status collecting): drawn once, never redrawn."""
    conn.execute(
        "UPDATE prio_batches SET noisy_share = ?, noise_scale = ?, status = 'collecting' "
        f"WHERE {_KEY_WHERE} AND noisy_share IS NULL",
        [noisy_share, scale, *_key_args(key)],
    )


def batches_to_collect(conn: duckdb.DuckDBPyConnection) -> list[LeaderBatch]:
    """Every batch not collected yet, oldest first."""
    rows = conn.execute(
        "SELECT policy_hash, task, region, batch_start, aggregate_share, reports, checksum, "
        "status, noisy_share, noise_scale FROM prio_batches WHERE status <> 'collected' "
        "ORDER BY batch_start, task, region, policy_hash"
    ).fetchall()
    return [
        LeaderBatch(
            _key_of(r),
            bytes(r[4]),
            int(r[5]),
            bytes(r[6]),
            str(r[7]),
            None if r[8] is None else bytes(r[8]),
            r[9],
        )
        for r in rows
    ]


def insert_fleet_rows(conn: duckdb.DuckDBPyConnection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write a collected batch's `fleet_aggregates` rows."""
    if not rows:
        return
    row = "(" + ", ".join("?" * 24) + ")"
    for i in range(0, len(rows), _ROWS_PER_INSERT):  # one statement per chunk, not per row
        chunk = rows[i : i + _ROWS_PER_INSERT]
        conn.execute(
            "INSERT INTO fleet_aggregates VALUES " + ", ".join([row] * len(chunk)),
            [v for r in chunk for v in r],
        )


def revealed(conn: duckdb.DuckDBPyConnection, batch_id: str) -> bool:
    """True if `fleet_aggregates` holds rows of that batch."""
    row = conn.execute(
        "SELECT count(*) FROM fleet_aggregates WHERE batch_id = ?", [batch_id]
    ).fetchone()
    return bool(row and row[0])


def mark_collected(conn: duckdb.DuckDBPyConnection, key: BatchKey, at: datetime) -> None:
    """The batch is revealed: never collected again."""
    conn.execute(
        f"UPDATE prio_batches SET status = 'collected', collected_at = ? WHERE {_KEY_WHERE}",
        [at, *_key_args(key)],
    )


@dataclass(frozen=True, slots=True)
class SinkRejection:
    """A report the sink refused to keep, not yet in the audit log."""

    envelope_id: str
    task: str
    device_id: str
    batch_start: str
    reason: str


def unaudited_rejections(
    conn: duckdb.DuckDBPyConnection, limit: int = 10_000
) -> list[SinkRejection]:
    """Reports the sink refused that the audit log does not hold yet (oldest first)."""
    rows = conn.execute(
        "SELECT CAST(envelope_id AS VARCHAR), task, device_id, CAST(batch_start AS VARCHAR), "
        "reason FROM prio_report_rejections WHERE NOT audited ORDER BY recorded_at LIMIT ?",
        [limit],
    ).fetchall()
    return [SinkRejection(*row) for row in rows]


def mark_rejections_audited(conn: duckdb.DuckDBPyConnection, rows: Sequence[SinkRejection]) -> None:
    """Record that `rows` are in the audit log."""
    conn.executemany(
        "UPDATE prio_report_rejections SET audited = TRUE "
        "WHERE device_id = ? AND envelope_id = ? AND task = ?",
        [(r.device_id, r.envelope_id, r.task) for r in rows],
    )
