"""The DuckDB warehouse: its schema, and the one write path the sink uses.

Exactly-once: the sink writes a batch's rows and the Kafka offsets that batch advances
in one DuckDB transaction, and on (re)start seeks to the stored offsets. Rows are also
keyed by (device id, envelope id), so a message produced twice (a client retry after a
lost 202) adds nothing either.

Deletion requests (a device revoked consent for a tier) are applied in the same
transaction: recorded in `deletion_requests` (keyed by request id, so a replay is a
no-op), and the device's `released_values` of that tier deleted for every envelope
whose window started before the request or that the ingest received before it. An
envelope of that kind arriving later (a replay, a retry) has those rows filtered out on
insert, so a deletion sticks in any order. `enforce_retention` deletes each tier's rows
past its retention (content first: it has the shortest).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from schemas import (
    CounterAggregate,
    HistogramAggregate,
    IngestedDeletionRequest,
    IngestedEnvelope,
    NoiseSpec,
    Tier,
    TotalAggregate,
)

__all__ = [
    "SCHEMA_VERSION",
    "PartitionOffset",
    "WriteResult",
    "apply_schema",
    "connect",
    "count_past_retention",
    "enforce_retention",
    "retention_cutoff",
    "rows_by_tier",
    "stored_offsets",
    "write_envelopes",
]

SCHEMA_VERSION = 2
"""2: envelope ids are unique per device, not across devices (a device that learned
another's envelope id could otherwise pre-empt it); version-1 files are migrated."""

_DDL = """
CREATE TABLE IF NOT EXISTS schema_meta (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS envelopes (
    envelope_id     UUID NOT NULL,
    device_id       VARCHAR NOT NULL,
    sequence        BIGINT NOT NULL,
    region          VARCHAR NOT NULL,
    policy_hash     VARCHAR NOT NULL,
    app_name        VARCHAR NOT NULL,
    app_version     VARCHAR NOT NULL,
    window_start    TIMESTAMPTZ NOT NULL,
    window_end      TIMESTAMPTZ NOT NULL,
    sent_at         TIMESTAMPTZ NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL,
    assurance       VARCHAR NOT NULL,
    key_fingerprint VARCHAR NOT NULL,
    PRIMARY KEY (device_id, envelope_id)
);
-- One row per released number. kind: counter | bucket | sum (per attribute cell), or
-- total | total_sum (one scalar over all cells: a count or a histogram's sum).
-- bucket_upper is NULL for the overflow bucket (+inf) and for non-bucket rows.
CREATE TABLE IF NOT EXISTS released_values (
    envelope_id  UUID NOT NULL,
    device_id    VARCHAR NOT NULL,
    region       VARCHAR NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL,
    signal       VARCHAR NOT NULL,
    tier         VARCHAR NOT NULL,
    unit         VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,
    attributes   JSON NOT NULL,
    bucket_index INTEGER,
    bucket_upper DOUBLE,
    value        DOUBLE NOT NULL,
    mechanism    VARCHAR NOT NULL,
    scale        DOUBLE NOT NULL,
    epsilon      DOUBLE,
    rho          DOUBLE,
    lower_bound  DOUBLE NOT NULL,
    upper_bound  DOUBLE NOT NULL
);
-- Releases the device's privacy ledger withheld (a cap was reached), per envelope.
CREATE TABLE IF NOT EXISTS suppressions (
    envelope_id  UUID NOT NULL,
    device_id    VARCHAR NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL,
    signal       VARCHAR NOT NULL,
    releases     INTEGER NOT NULL
);
-- Consent revocations the ingest recorded, and what they deleted.
CREATE TABLE IF NOT EXISTS deletion_requests (
    request_id      UUID PRIMARY KEY,
    device_id       VARCHAR NOT NULL,
    region          VARCHAR NOT NULL,
    tier            VARCHAR NOT NULL,
    requested_at    TIMESTAMPTZ NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL,
    consent_hash    VARCHAR NOT NULL,
    key_fingerprint VARCHAR NOT NULL,
    rows_deleted    BIGINT NOT NULL
);
-- Prio3 reports of aggregate-model signals, as the leader (the ingest) keeps them until
-- they are aggregated: the public share, the leader's input share and the helper's
-- share sealed to the helper. None of them reveals a device's values. One report per
-- (task, report_id) and one per (task, policy, region, batch, device): a device
-- contributes once to a batch. status: pending | aggregated | rejected (with reason).
CREATE TABLE IF NOT EXISTS prio_reports (
    task         VARCHAR NOT NULL,
    report_id    BLOB NOT NULL,
    policy_hash  VARCHAR NOT NULL,
    region       VARCHAR NOT NULL,
    batch_start  TIMESTAMPTZ NOT NULL,
    device_id    VARCHAR NOT NULL,
    envelope_id  UUID NOT NULL,
    tier         VARCHAR NOT NULL,
    assurance    VARCHAR NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    public_share BLOB NOT NULL,
    leader_share BLOB NOT NULL,
    helper_share BLOB NOT NULL,
    status       VARCHAR NOT NULL,
    reason       VARCHAR,
    PRIMARY KEY (task, report_id)
);
-- Reports the sink refused to keep: report_replayed (a report id seen before) or
-- duplicate_contribution (a second report of one device for one task and batch).
CREATE TABLE IF NOT EXISTS prio_report_rejections (
    envelope_id  UUID NOT NULL,
    task         VARCHAR NOT NULL,
    report_id    BLOB NOT NULL,
    device_id    VARCHAR NOT NULL,
    batch_start  TIMESTAMPTZ NOT NULL,
    reason       VARCHAR NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL,
    audited      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (device_id, envelope_id, task)
);
-- Fleet aggregates revealed by the collector: one row per entry of a task's vector.
-- value is in the signal's unit (units x resolution); the noise is `draws` independent
-- draws of `mechanism` at `scale` (in units), one per aggregator; reports is how many
-- devices' reports the batch summed (at least the policy's min_batch_size).
-- kind: counter (a counter's cell) | bucket | count | sum (a histogram's cell).
CREATE TABLE IF NOT EXISTS fleet_aggregates (
    batch_id     VARCHAR NOT NULL,
    vector_index INTEGER NOT NULL,
    task         VARCHAR NOT NULL,
    policy_hash  VARCHAR NOT NULL,
    region       VARCHAR NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end   TIMESTAMPTZ NOT NULL,
    signal       VARCHAR NOT NULL,
    tier         VARCHAR NOT NULL,
    unit         VARCHAR NOT NULL,
    kind         VARCHAR NOT NULL,
    attributes   JSON NOT NULL,
    bucket_index INTEGER,
    bucket_upper DOUBLE,
    value        DOUBLE NOT NULL,
    reports      BIGINT NOT NULL,
    mechanism    VARCHAR NOT NULL,
    scale        DOUBLE NOT NULL,
    draws        INTEGER NOT NULL,
    resolution   DOUBLE NOT NULL,
    epsilon      DOUBLE NOT NULL,
    lower_bound  DOUBLE NOT NULL,
    upper_bound  DOUBLE NOT NULL,
    collected_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, vector_index)
);
-- The leader's side of each batch (ingest.aggregation): its running aggregate share and
-- report count, the checksum over the aggregated report ids it shows the helper, and
-- its noisy share, stored before use so it is never redrawn.
-- status: open | below_minimum | collecting | collected.
CREATE TABLE IF NOT EXISTS prio_batches (
    task            VARCHAR NOT NULL,
    policy_hash     VARCHAR NOT NULL,
    region          VARCHAR NOT NULL,
    batch_start     TIMESTAMPTZ NOT NULL,
    batch_id        VARCHAR NOT NULL,
    aggregate_share BLOB NOT NULL,
    reports         BIGINT NOT NULL,
    checksum        BLOB NOT NULL,
    status          VARCHAR NOT NULL,
    noisy_share     BLOB,
    noise_scale     DOUBLE,
    collected_at    TIMESTAMPTZ,
    PRIMARY KEY (task, policy_hash, region, batch_start)
);
-- Which aggregation job a pending report was sent in, stored before sending: a retry
-- resends the same job (same id), which the helper answers again without double counting.
CREATE TABLE IF NOT EXISTS prio_job_reports (
    task      VARCHAR NOT NULL,
    report_id BLOB NOT NULL,
    job_id    VARCHAR NOT NULL,
    PRIMARY KEY (task, report_id)
);
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer_group VARCHAR NOT NULL,
    topic          VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset    BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);
"""


_VALUE_TYPES = [
    pa.string(),
    pa.string(),
    pa.string(),
    pa.timestamp("us", tz="UTC"),
    pa.timestamp("us", tz="UTC"),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.int32(),
    pa.float64(),
    pa.float64(),
    pa.string(),
    pa.float64(),
    pa.float64(),
    pa.float64(),
    pa.float64(),
    pa.float64(),
]


_REPORT_TYPES = [
    pa.string(),
    pa.binary(),
    pa.string(),
    pa.string(),
    pa.timestamp("us", tz="UTC"),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.timestamp("us", tz="UTC"),
    pa.binary(),
    pa.binary(),
    pa.binary(),
    pa.string(),
    pa.string(),
]


def _insert_arrow(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    rows: Sequence[tuple[Any, ...]],
    types: Sequence[pa.DataType],
) -> None:
    """Insert `rows` (tuples in the table's column order) as one Arrow batch."""
    batch = pa.Table.from_arrays(
        [pa.array(col, type=typ) for col, typ in zip(zip(*rows, strict=True), types, strict=True)],
        names=[f"c{i}" for i in range(len(types))],
    )
    name = f"_qw_insert_{table}"
    conn.register(name, batch)
    try:
        conn.execute(f"INSERT INTO {table} SELECT * FROM {name}")
    finally:
        conn.unregister(name)


@dataclass(frozen=True, slots=True)
class PartitionOffset:
    """The next Kafka offset to read for one partition, stored with the rows."""

    topic: str
    partition: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one write did: new envelopes, skipped duplicates, deletion requests applied."""

    inserted: int
    duplicates: int
    deletions: int = 0
    reports_refused: int = 0
    """Prio3 reports of new envelopes refused (replayed, or a second contribution)."""


# Tables whose primary key changed in version 2: rebuilt with the new key, rows kept.
_REKEYED = ("envelopes", "prio_report_rejections")


def _migrate_v1(conn: duckdb.DuckDBPyConnection) -> None:
    """Version 1 keyed envelopes by envelope id alone: rebuild with (device, envelope)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        for table in _REKEYED:
            exists = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
            ).fetchone()
            if exists == (0,):
                continue
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
            conn.execute(_DDL)  # creates the table anew, with the version-2 key
            conn.execute(f"INSERT INTO {table} SELECT * FROM {table}_v1")
            conn.execute(f"DROP TABLE {table}_v1")
        conn.execute("UPDATE schema_meta SET version = ?", [SCHEMA_VERSION])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def apply_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the warehouse tables if absent, and migrate an older file (idempotent)."""
    conn.execute(_DDL)
    version = conn.execute("SELECT max(version) FROM schema_meta").fetchone()
    if version is None or version[0] is None:
        conn.execute("INSERT INTO schema_meta VALUES (?)", [SCHEMA_VERSION])
    elif version[0] == 1:
        _migrate_v1(conn)


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) a warehouse file with the schema applied."""
    conn = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        apply_schema(conn)
    return conn


def stored_offsets(conn: duckdb.DuckDBPyConnection, group: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> next offset to consume, as committed with the rows."""
    rows = conn.execute(
        "SELECT topic, kafka_partition, next_offset FROM consumer_offsets WHERE consumer_group = ?",
        [group],
    ).fetchall()
    return {(t, p): o for t, p, o in rows}


def _noise_cols(noise: NoiseSpec) -> tuple[Any, ...]:
    return (noise.mechanism.value, noise.scale, noise.epsilon, noise.rho, noise.lower, noise.upper)


def _value_rows(item: IngestedEnvelope) -> Iterable[tuple[Any, ...]]:
    env = item.envelope
    head = (str(env.envelope_id), env.device_id, env.region, env.window_start, env.window_end)
    for agg in env.aggregates:
        attrs = json.dumps(agg.attributes, sort_keys=True, separators=(",", ":"))
        meta = (agg.signal, agg.tier.value, agg.unit)
        if isinstance(agg, CounterAggregate):
            yield (*head, *meta, "counter", attrs, None, None, agg.value, *_noise_cols(agg.noise))
        elif isinstance(agg, TotalAggregate):
            kind = "total" if agg.measure == "count" else "total_sum"
            yield (*head, *meta, kind, attrs, None, None, agg.value, *_noise_cols(agg.noise))
        elif isinstance(agg, HistogramAggregate):
            noise = _noise_cols(agg.count_noise)
            uppers: list[float | None] = [*agg.bounds, None]
            for i, (upper, count) in enumerate(zip(uppers, agg.counts, strict=True)):
                yield (*head, *meta, "bucket", attrs, i, upper, count, *noise)
            if agg.sum is not None and agg.sum_noise is not None:
                yield (*head, *meta, "sum", attrs, None, None, agg.sum, *_noise_cols(agg.sum_noise))


def _record_deletions(
    conn: duckdb.DuckDBPyConnection, requests: Sequence[IngestedDeletionRequest]
) -> int:
    """Record new deletion requests and delete what they cover; returns how many were new."""
    applied = 0
    for item in requests:
        d = item.deletion
        known = conn.execute(
            "SELECT 1 FROM deletion_requests WHERE request_id = ?", [str(d.request_id)]
        ).fetchone()
        if known is not None:
            continue
        deleted = conn.execute(
            """DELETE FROM released_values WHERE device_id = ? AND tier = ?
               AND envelope_id IN (SELECT envelope_id FROM envelopes WHERE device_id = ?
                                   AND (window_start < ? OR received_at <= ?))""",
            [d.device_id, d.tier.value, d.device_id, d.requested_at, item.received_at],
        ).fetchone()
        # Prio3 reports of the tier not yet aggregated go too; one already summed into a
        # batch cannot be taken out of it (the leader never saw its value), and is kept
        # only as that batch's noisy total of at least min_batch_size devices. So is one
        # already sent to the helper in a job (prio_job_reports): the helper may have
        # summed it, and the leader must resend that job whole.
        reports = conn.execute(
            "DELETE FROM prio_reports WHERE device_id = ? AND tier = ? AND status = 'pending' "
            "AND NOT EXISTS (SELECT 1 FROM prio_job_reports j "
            "WHERE j.task = prio_reports.task AND j.report_id = prio_reports.report_id)",
            [d.device_id, d.tier.value],
        ).fetchone()
        conn.execute(
            "INSERT INTO deletion_requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                str(d.request_id),
                d.device_id,
                d.region,
                d.tier.value,
                d.requested_at,
                item.received_at,
                d.consent_hash,
                item.key_fingerprint,
                (int(deleted[0]) if deleted else 0) + (int(reports[0]) if reports else 0),
            ],
        )
        applied += 1
    return applied


def _deleted_cells(
    conn: duckdb.DuckDBPyConnection, fresh: Sequence[IngestedEnvelope]
) -> dict[tuple[str, str], list[tuple[datetime, datetime]]]:
    """(device, tier) -> [(requested_at, received_at)] of recorded deletions."""
    devices = sorted({i.envelope.device_id for i in fresh})
    rows = conn.execute(
        "SELECT device_id, tier, requested_at, received_at FROM deletion_requests "
        "WHERE device_id IN (SELECT unnest(?::VARCHAR[]))",
        [devices],
    ).fetchall()
    out: dict[tuple[str, str], list[tuple[datetime, datetime]]] = {}
    for device, tier, requested, received in rows:
        out.setdefault((device, tier), []).append((requested, received))
    return out


def _covered(
    item: IngestedEnvelope,
    tier: str,
    deletions: Mapping[tuple[str, str], list[tuple[datetime, datetime]]],
) -> bool:
    env = item.envelope
    return any(
        env.window_start < requested or item.received_at <= received
        for requested, received in deletions.get((env.device_id, tier), ())
    )


def _store_reports(
    conn: duckdb.DuckDBPyConnection,
    fresh: Sequence[IngestedEnvelope],
    deletions: Mapping[tuple[str, str], list[tuple[datetime, datetime]]],
) -> int:
    """Keep the Prio3 reports of newly stored envelopes; returns how many were refused.

    A report whose (task, report id) is already kept is `report_replayed`; a second
    report of one device for one task, policy, region and batch is
    `duplicate_contribution` (one device, one contribution per batch: the noise is
    calibrated to that); one of a tier the device asked to delete (a late replay after a
    consent revocation) is `deleted_by_request`. Refused reports are recorded with their
    reason, never kept.
    """
    items = [i for i in fresh if i.envelope.reports and i.batch_start is not None]
    if not items:
        return 0
    tasks = sorted({r.task for i in items for r in i.envelope.reports})
    devices = sorted({i.envelope.device_id for i in items})
    seen_ids = {
        (t, bytes(r))
        for t, r in conn.execute(
            "SELECT task, report_id FROM prio_reports WHERE task IN (SELECT unnest(?::VARCHAR[]))"
            " AND report_id IN (SELECT unnest(?::BLOB[]))",
            [tasks, [bytes(r.report_id) for i in items for r in i.envelope.reports]],
        ).fetchall()
    }
    batches = sorted({i.batch_start for i in items if i.batch_start is not None})
    seen_contributions = set(
        conn.execute(
            "SELECT task, policy_hash, region, batch_start, device_id FROM prio_reports "
            "WHERE device_id IN (SELECT unnest(?::VARCHAR[])) "
            "AND batch_start IN (SELECT unnest(?::TIMESTAMPTZ[]))",
            [devices, batches],
        ).fetchall()
    )
    kept: list[tuple[Any, ...]] = []
    refused: list[tuple[Any, ...]] = []
    for item in items:
        env, batch = item.envelope, item.batch_start
        assert batch is not None
        for r in env.reports:
            rid = bytes(r.report_id)
            contribution = (r.task, env.policy_hash, env.region, batch, env.device_id)
            reason = (
                "report_replayed"
                if (r.task, rid) in seen_ids
                else "duplicate_contribution"
                if contribution in seen_contributions
                else "deleted_by_request"
                if deletions and _covered(item, r.tier.value, deletions)
                else None
            )
            if reason is not None:
                refused.append(
                    (
                        str(env.envelope_id),
                        r.task,
                        rid,
                        env.device_id,
                        batch,
                        reason,
                        item.received_at,
                    )
                )
                continue
            seen_ids.add((r.task, rid))
            seen_contributions.add(contribution)
            kept.append(
                (
                    r.task,
                    rid,
                    env.policy_hash,
                    env.region,
                    batch,
                    env.device_id,
                    str(env.envelope_id),
                    r.tier.value,
                    item.assurance,
                    item.received_at,
                    bytes(r.public_share),
                    bytes(r.leader_share),
                    bytes(r.helper_share),
                    "pending",
                    None,
                )
            )
    if kept:
        # One columnar insert: executemany costs a round trip per row.
        _insert_arrow(conn, "prio_reports", kept, _REPORT_TYPES)
    if refused:
        conn.executemany(
            "INSERT OR IGNORE INTO prio_report_rejections (envelope_id, task, report_id, "
            "device_id, batch_start, reason, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            refused,
        )
    return len(refused)


def write_envelopes(
    conn: duckdb.DuckDBPyConnection,
    items: Sequence[IngestedEnvelope | IngestedDeletionRequest],
    *,
    group: str | None = None,
    offsets: Sequence[PartitionOffset] = (),
) -> WriteResult:
    """Insert envelopes not seen before, apply deletion requests, and advance `offsets`,
    in one transaction.

    Duplicates (same envelope id, already stored or twice in `items`) are skipped; a
    deletion request already recorded is a no-op.
    """
    requests = [i for i in items if isinstance(i, IngestedDeletionRequest)]
    envelopes = [i for i in items if isinstance(i, IngestedEnvelope)]
    conn.execute("BEGIN TRANSACTION")
    try:
        applied = _record_deletions(conn, requests)
        items = envelopes
        # Unique per device: another device's envelope with the same id is its own.
        keys = [(i.envelope.device_id, str(i.envelope.envelope_id)) for i in items]
        seen: set[tuple[str, str]] = set()
        if keys:
            rows = conn.execute(
                "SELECT device_id, CAST(envelope_id AS VARCHAR) FROM envelopes "
                "WHERE envelope_id IN (SELECT unnest(?::UUID[]))",
                [[k[1] for k in keys]],
            ).fetchall()
            seen = {(d, e) for d, e in rows}
        fresh: list[IngestedEnvelope] = []
        reports_refused = 0
        for item, key in zip(items, keys, strict=True):
            if key not in seen:
                seen.add(key)
                fresh.append(item)
        if fresh:
            conn.executemany(
                "INSERT INTO envelopes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.envelope_id,
                        e.device_id,
                        e.sequence,
                        e.region,
                        e.policy_hash,
                        e.app.name,
                        e.app.version,
                        e.window_start,
                        e.window_end,
                        e.sent_at,
                        i.received_at,
                        i.assurance,
                        i.key_fingerprint,
                    )
                    for i in fresh
                    for e in (i.envelope,)
                ],
            )
            deletions = _deleted_cells(conn, fresh)
            values = [
                row
                for i in fresh
                for row in _value_rows(i)
                if not (deletions and _covered(i, row[6], deletions))
            ]
            reports_refused = _store_reports(conn, fresh, deletions)
            suppressed = [
                (str(e.envelope_id), e.device_id, e.window_start, e.window_end, signal, n)
                for i in fresh
                for e in (i.envelope,)
                for signal, n in e.suppressed.items()
            ]
            if suppressed:
                conn.executemany("INSERT INTO suppressions VALUES (?, ?, ?, ?, ?, ?)", suppressed)
            if values:
                # One columnar insert: executemany costs a round trip per row.
                _insert_arrow(conn, "released_values", values, _VALUE_TYPES)
        if offsets:
            if group is None:
                raise ValueError("offsets need a consumer group")
            conn.executemany(
                "INSERT OR REPLACE INTO consumer_offsets VALUES (?, ?, ?, ?)",
                [(group, o.topic, o.partition, o.next_offset) for o in offsets],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return WriteResult(
        inserted=len(fresh),
        duplicates=len(items) - len(fresh),
        deletions=applied,
        reports_refused=reports_refused,
    )


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
