"""Answers for compliance auditors, from the warehouse and the ingest's audit log.

`build_auditor_report` reads, never writes:

- **inventory**: what data exists, per table, tier and region: rows and the oldest and
  newest window (with a policy: rows past its retention now, which a run would delete);
- **retention**: what each retention run deleted, per tier (and table), with its
  cutoff, when it ran, and when the deleted bytes left the file;
- **deletions**: every deletion request the warehouse applied (rows deleted, erased
  or pending) and, with the log, every one the ingest accepted, matched by request id:
  one accepted but not applied (still in transit, or lost) shows up as such;
- **chain**: whether the audit log's hash chain verifies (to an anchored head), and with
  the ingest's public audit key, whether its signed checkpoints do.

Every part is a Polars DataFrame (`AuditorReport`), for notebooks and the HTML report.
A warehouse written before retention runs and erasures were recorded has empty parts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import polars as pl
from nacl.signing import VerifyKey

from auditlog import AuditLog
from auditlog import verify_log as verify_signed_log
from schemas import Tier
from warehouse import RETENTION_TABLES, retention_cutoff

__all__ = ["AuditorReport", "ChainStatus", "build_auditor_report", "verify_log"]

# (table, tier column, region column, oldest column, newest column): what the inventory
# counts. Envelope rows hold no values (keys that make replays idempotent); dead letters
# are messages kept verbatim, outside retention and deletion requests.
_HELD: tuple[tuple[str, str | None, str | None, str, str], ...] = (
    ("released_values", "tier", "region", "window_start", "window_end"),
    ("fleet_aggregates", "tier", "region", "window_start", "window_end"),
    ("prio_reports", "tier", "region", "batch_start", "batch_start"),
    ("envelopes", None, "region", "window_start", "window_end"),
    ("dead_letters", None, None, "recorded_at", "recorded_at"),
)
_RETENTION_COLUMN = dict(RETENTION_TABLES)

_TS = pl.Datetime("us", "UTC")
_STR, _INT = pl.String(), pl.Int64()
_INVENTORY_SCHEMA: dict[str, pl.DataType] = {
    "table": _STR,
    "tier": _STR,
    "region": _STR,
    "rows": _INT,
    "oldest": _TS,
    "newest": _TS,
    "past_retention": _INT,
}
_DELETION_ENTRY = re.compile(r"^deletion (?P<id>[0-9a-f-]{36}) tier=(?P<tier>\w+)")
_RETENTION_ENTRY = re.compile(r"^retention run (?P<id>[0-9a-f-]{36}) tier=(?P<tier>\w+)")


@dataclass(frozen=True, slots=True)
class ChainStatus:
    """The audit log's hash chain, verified."""

    path: str
    ok: bool
    entries: int
    head: str
    anchored: bool
    """Checked against a head kept elsewhere (catches entries cut off the end)."""
    broken_at: int | None = None
    problem: str | None = None
    signed_checkpoints: int | None = None
    """Checkpoints verified against the ingest's audit key; None: no key was given (then
    a rewrite of the whole chain would not be detected)."""
    unsigned_entries: int | None = None
    """Entries after the last signed checkpoint (with a key): no signature vouches for
    them yet."""


@dataclass(frozen=True, slots=True)
class AuditorReport:
    """What an auditor asks, as Polars frames (see the module docstring)."""

    source: str
    generated_at: datetime
    inventory: pl.DataFrame
    retention: pl.DataFrame
    deletions: pl.DataFrame
    erasures_pending: int
    """Deletions (requests, retention runs) whose bytes are still in the file."""
    chain: ChainStatus | None
    """None: no audit log was given."""


def _frame(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    schema: dict[str, pl.DataType],
    params: list[object] | None = None,
) -> pl.DataFrame:
    rel = conn.sql(sql, params=params)
    if rel is None:  # pragma: no cover - a SELECT always gives a relation
        raise AssertionError("query returned no relation")
    frame: pl.DataFrame = rel.pl()
    return frame.cast(schema)  # type: ignore[arg-type]  # polars' Mapping is invariant


def _tables(conn: duckdb.DuckDBPyConnection) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()
    return {str(r[0]) for r in rows}


def _inventory(
    conn: duckdb.DuckDBPyConnection,
    present: set[str],
    cutoffs: Mapping[str, datetime] | None,
) -> pl.DataFrame:
    frames = [pl.DataFrame(schema=_INVENTORY_SCHEMA)]
    tiers = list(cutoffs or {})
    stamps = [cutoffs[t] for t in tiers] if cutoffs else []
    for table, tier, region, oldest, newest in _HELD:
        if table not in present:
            continue
        keyed = tier is not None and cutoffs is not None and table in _RETENTION_COLUMN
        past = (
            f"count(*) FILTER (WHERE {_RETENTION_COLUMN[table]} < c.cutoff)"
            if keyed
            else "NULL::BIGINT"
        )
        join = (
            "LEFT JOIN (SELECT unnest(?::VARCHAR[]) AS tier, "
            "unnest(?::TIMESTAMPTZ[]) AS cutoff) c ON c.tier = t.tier"
            if keyed
            else ""
        )
        sql = (
            f"SELECT '{table}' AS table, {f't.{tier}' if tier else 'NULL'}::VARCHAR AS tier, "
            f"{f't.{region}' if region else 'NULL'}::VARCHAR AS region, "
            f"count(*) AS rows, min(t.{oldest}) AS oldest, max(t.{newest}) AS newest, "
            f"{past} AS past_retention FROM {table} t {join} GROUP BY ALL HAVING count(*) > 0"
        )
        frames.append(_frame(conn, sql, _INVENTORY_SCHEMA, [tiers, stamps] if keyed else None))
    return pl.concat(frames).sort(["table", "tier", "region"], nulls_last=True)


def _retention(conn: duckdb.DuckDBPyConnection, present: set[str]) -> pl.DataFrame:
    per_table = ", ".join(
        f"coalesce(sum(r.rows_deleted) FILTER (WHERE r.table_name = '{t}'), 0) AS {t}"
        for t, _ in RETENTION_TABLES
    )
    schema: dict[str, pl.DataType] = {
        "run_id": _STR,
        "ran_at": _TS,
        "as_of": _TS,
        "tier": _STR,
        "keep_days": pl.Int32(),
        "cutoff": _TS,
        **{t: _INT for t, _ in RETENTION_TABLES},
        "rows_deleted": _INT,
        "erased_at": _TS,
    }
    if not {"retention_runs", "erasures"} <= present:
        return pl.DataFrame(schema=schema)
    return _frame(
        conn,
        f"""SELECT CAST(r.run_id AS VARCHAR) AS run_id, min(r.ran_at) AS ran_at,
                   min(r.as_of) AS as_of, r.tier, min(r.keep_days) AS keep_days,
                   min(r.cutoff) AS cutoff, {per_table},
                   sum(r.rows_deleted) AS rows_deleted, min(e.erased_at) AS erased_at
            FROM retention_runs r LEFT JOIN erasures e
              ON e.source = 'retention' AND e.source_id = r.run_id
            GROUP BY r.run_id, r.tier ORDER BY ran_at, r.tier""",
        schema,
    )


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name = ?",
        [table],
    ).fetchall()
    return {str(r[0]) for r in rows}


def _applied(conn: duckdb.DuckDBPyConnection, present: set[str]) -> pl.DataFrame:
    # Request ids are unique per device (schema version 3): an erasure names its
    # request's device. A file opened read-only before its migration has request ids
    # unique across devices, and erasures without the column.
    same_device = (
        " AND e.device_id = d.device_id"
        if "erasures" in present and "device_id" in _columns(conn, "erasures")
        else ""
    )
    erased = (
        "(SELECT e.erased_at FROM erasures e WHERE e.source = 'deletion_request' "
        f"AND e.source_id = d.request_id{same_device})"
        if "erasures" in present
        else "NULL::TIMESTAMPTZ"
    )
    schema: dict[str, pl.DataType] = {
        "request_id": _STR,
        "device_id": _STR,
        "region": _STR,
        "tier": _STR,
        "requested_at": _TS,
        "received_at": _TS,
        "rows_deleted": _INT,
        "erased_at": _TS,
    }
    if "deletion_requests" not in present:
        return pl.DataFrame(schema=schema)
    return _frame(
        conn,
        f"""SELECT CAST(d.request_id AS VARCHAR) AS request_id, d.device_id, d.region,
                   d.tier, d.requested_at, d.received_at, d.rows_deleted,
                   {erased} AS erased_at
            FROM deletion_requests d ORDER BY d.received_at, d.request_id, d.device_id""",
        schema,
    )


def _logged(audit: AuditLog | None, action: str, pattern: re.Pattern[str]) -> pl.DataFrame:
    """Accepted or applied entries of `action` in the log, by the id their detail names."""
    rows: list[dict[str, object]] = []
    for entry in audit.entries(action=action) if audit is not None else []:
        match = pattern.match(entry.detail or "")
        if match is None or entry.decision == "rejected":
            continue
        rows.append(
            {
                "id": match["id"],
                "tier": match["tier"],
                "device_id": entry.device_id,
                "audit_seq": entry.seq,
                "logged_at": datetime.fromtimestamp(entry.at, UTC),
            }
        )
    schema: dict[str, pl.DataType] = {
        "id": _STR,
        "tier": _STR,
        "device_id": _STR,
        "audit_seq": _INT,
        "logged_at": _TS,
    }
    return pl.DataFrame(rows, schema=schema)


def _deletions(applied: pl.DataFrame, logged: pl.DataFrame, with_log: bool) -> pl.DataFrame:
    # A request id is unique per device, not across devices: matched by both.
    accepted = logged.select(
        pl.col("id").alias("request_id"),
        "device_id",
        pl.col("tier").alias("logged_tier"),
        "audit_seq",
        "logged_at",
    ).unique(["request_id", "device_id"], keep="first", maintain_order=True)
    joined = applied.join(accepted, on=["request_id", "device_id"], how="full", coalesce=True)
    status = (
        pl.when(pl.col("rows_deleted").is_null())
        .then(pl.lit("accepted, not applied"))
        .when(pl.col("rows_deleted") == 0)
        .then(pl.lit("applied, nothing stored"))
        .when(pl.col("erased_at").is_not_null())
        .then(pl.lit("applied, erased"))
        .otherwise(pl.lit("applied, erasure pending"))
    )
    out = joined.with_columns(
        pl.col("tier").fill_null(pl.col("logged_tier")),
        status.alias("status"),
        (pl.col("audit_seq").is_not_null() if with_log else pl.lit(None, pl.Boolean)).alias(
            "in_audit_log"
        ),
    ).drop("logged_tier")
    return out.sort(["received_at", "logged_at", "request_id", "device_id"], nulls_last=True)


def verify_log(
    audit: AuditLog, *, expected_head: str | None = None, key: VerifyKey | None = None
) -> ChainStatus:
    """Verify the log's hash chain (to `expected_head` if given) and, with the ingest's
    public audit `key`, its signed checkpoints (a rewritten chain fails them)."""
    if key is None:
        report = audit.verify_chain(expected_head=expected_head)
        return ChainStatus(
            str(audit.path),
            report.ok,
            report.entries,
            report.head,
            expected_head is not None,
            report.broken_at,
            report.problem,
        )
    checked = verify_signed_log(audit, key, expected_head=expected_head)
    chain = checked.chain
    return ChainStatus(
        str(audit.path),
        checked.ok,
        chain.entries,
        chain.head,
        expected_head is not None,
        chain.broken_at,
        chain.problem if not chain.ok else checked.problem,
        signed_checkpoints=checked.checkpoints,
        unsigned_entries=checked.uncovered if checked.ok else None,
    )


def build_auditor_report(
    conn: duckdb.DuckDBPyConnection,
    *,
    audit: AuditLog | None = None,
    expected_head: str | None = None,
    audit_key: VerifyKey | None = None,
    retention_days: Mapping[Tier, int] | None = None,
    now: datetime | None = None,
    source: str = "",
) -> AuditorReport:
    """Read the warehouse `conn` (and the audit log `audit`, if given) into an
    `AuditorReport`. With `retention_days` (a policy's), the inventory counts the rows
    past retention at `now` (default: the current time). With `audit_key` (the ingest's
    public audit key) the log's signed checkpoints are verified too."""
    at = now or datetime.now(UTC)
    present = _tables(conn)
    cutoffs = (
        {Tier(t).value: retention_cutoff(d, at) for t, d in retention_days.items()}
        if retention_days is not None
        else None
    )
    retention = _retention(conn, present)
    logged_runs = _logged(audit, "retention", _RETENTION_ENTRY).select(
        pl.col("id").alias("run_id"), "tier", "audit_seq"
    )
    retention = retention.join(logged_runs, on=["run_id", "tier"], how="left").unique(
        ["run_id", "tier"], keep="first", maintain_order=True
    )
    deletions = _deletions(
        _applied(conn, present), _logged(audit, "deletion", _DELETION_ENTRY), audit is not None
    )
    pending = 0
    if "erasures" in present:
        # fetchall: a result left unfinished (fetchone) blocks the relations below.
        ((n,),) = conn.execute("SELECT count(*) FROM erasures WHERE erased_at IS NULL").fetchall()
        pending = int(n)
    return AuditorReport(
        source=source,
        generated_at=at,
        inventory=_inventory(conn, present, cutoffs),
        retention=retention,
        deletions=deletions,
        erasures_pending=pending,
        chain=(
            verify_log(audit, expected_head=expected_head, key=audit_key)
            if audit is not None
            else None
        ),
    )
