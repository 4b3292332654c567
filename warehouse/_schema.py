"""The warehouse's tables (DuckDB): the contract between the ingest's sink, which writes
them, and analytics, which reads them. Neither owns it; both import it from here.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from warehouse._dead_letters import upgrade_dead_letters
from warehouse._files import duckdb_file_problem

__all__ = ["COLUMNS_SINCE", "SCHEMA_VERSION", "apply_schema", "connect"]

SCHEMA_VERSION = 3
"""2: envelope ids are unique per device, not across devices (a device that learned
another's envelope id could otherwise pre-empt it). 3: so are deletion request ids (a
device that used another's request id first made the victim's deletion a no-op), and an
erasure names the device of its deletion request. Older files are migrated."""

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
-- Consent revocations the ingest recorded, and what they deleted. A request id is the
-- device's own: unique per device, as envelope ids are.
CREATE TABLE IF NOT EXISTS deletion_requests (
    request_id      UUID NOT NULL,
    device_id       VARCHAR NOT NULL,
    region          VARCHAR NOT NULL,
    tier            VARCHAR NOT NULL,
    requested_at    TIMESTAMPTZ NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL,
    consent_hash    VARCHAR NOT NULL,
    key_fingerprint VARCHAR NOT NULL,
    rows_deleted    BIGINT NOT NULL,
    PRIMARY KEY (device_id, request_id)
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
-- Messages the sink could not store (warehouse._dead_letters): stage decode (not a
-- message) or store (DuckDB refused its rows). Kafka coordinates when it came from
-- Kafka (letter_id kafka:<topic>:<partition>:<offset>), else NULL (embedded mode,
-- letter_id sha256:<hex of message_value>). message_value is the message as read (or,
-- embedded, its JSON as it would travel on Kafka); envelope_id and device_id when known.
CREATE TABLE IF NOT EXISTS dead_letters (
    letter_id       VARCHAR PRIMARY KEY,
    stage           VARCHAR NOT NULL,
    topic           VARCHAR,
    kafka_partition INTEGER,
    kafka_offset    BIGINT,
    consumer_group  VARCHAR,
    message_key     BLOB,
    message_value   BLOB,
    envelope_id     VARCHAR,
    device_id       VARCHAR,
    error_class     VARCHAR NOT NULL,
    error           VARCHAR NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer_group VARCHAR NOT NULL,
    topic          VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset    BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);
-- What each retention run deleted (`warehouse.apply_retention`, `quietwire retention`),
-- per tier and table, written in the deletion's own transaction. as_of is the reference
-- time the cutoffs count back from; ran_at the wall-clock time of the run.
CREATE TABLE IF NOT EXISTS retention_runs (
    run_id       UUID NOT NULL,
    ran_at       TIMESTAMPTZ NOT NULL,
    as_of        TIMESTAMPTZ NOT NULL,
    tier         VARCHAR NOT NULL,
    keep_days    INTEGER NOT NULL,
    cutoff       TIMESTAMPTZ NOT NULL,
    table_name   VARCHAR NOT NULL,
    rows_deleted BIGINT NOT NULL,
    PRIMARY KEY (run_id, tier, table_name)
);
-- Deletions whose bytes must leave the file: one row per deletion request or retention
-- run that deleted rows, written in its transaction. erased_at is set by the rewrite
-- into a fresh file that no longer holds them (warehouse/_compact.py); NULL: pending.
-- source: deletion_request (source_id = request_id, device_id = its device: request ids
-- are unique per device) | retention (source_id = run_id, device_id = '').
CREATE TABLE IF NOT EXISTS erasures (
    source       VARCHAR NOT NULL,
    source_id    UUID NOT NULL,
    deleted_at   TIMESTAMPTZ NOT NULL,
    rows_deleted BIGINT NOT NULL,
    erased_at    TIMESTAMPTZ,
    device_id    VARCHAR NOT NULL DEFAULT '',
    PRIMARY KEY (source, source_id, device_id)
);
"""


# Tables whose primary key changed in a version: rebuilt with the new key, rows kept.
COLUMNS_SINCE: dict[int, dict[str, tuple[str, ...]]] = {3: {"erasures": ("device_id",)}}
"""Columns a schema version added to a table that existed before it: a reader of an
older file (read-only, not migrated) expects every other column of today's layout."""

_REKEYED: dict[int, tuple[str, ...]] = {
    2: ("envelopes", "prio_report_rejections"),  # (device, envelope)
    3: ("deletion_requests", "erasures"),  # (device, request); erasures gain device_id
}


def _rebuild(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    """Recreate `table` as `_DDL` defines it now, rows kept (by column name: a column
    added since gets its default)."""
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchall()
    if exists == [(0,)]:
        return
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    conn.execute(_DDL)  # creates the table anew, with the current key
    conn.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {table}_old")
    conn.execute(f"DROP TABLE {table}_old")


def _migrate(conn: duckdb.DuckDBPyConnection, version: int) -> None:
    """Bring a file of `version` to `SCHEMA_VERSION`, in one transaction."""
    conn.execute("BEGIN TRANSACTION")
    try:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for table in _REKEYED[step]:
                _rebuild(conn, table)
            if step == 3:
                # Until now a request id was unique across devices: each erasure of a
                # deletion request names the one device whose request it was.
                conn.execute(
                    "UPDATE erasures SET device_id = d.device_id FROM deletion_requests d "
                    "WHERE erasures.source = 'deletion_request' "
                    "AND erasures.source_id = d.request_id"
                )
        conn.execute("UPDATE schema_meta SET version = ?", [SCHEMA_VERSION])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def apply_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the warehouse tables if absent, and migrate an older file (idempotent)."""
    conn.execute(_DDL)
    upgrade_dead_letters(conn, _DDL)
    # fetchall: a result left unfinished (fetchone) makes DuckDB refuse the caller's
    # next relation (`conn.sql(...)`) on the connection this returns.
    ((version,),) = conn.execute("SELECT max(version) FROM schema_meta").fetchall()
    if version is None:
        conn.execute("INSERT INTO schema_meta VALUES (?)", [SCHEMA_VERSION])
    elif version < SCHEMA_VERSION:
        _migrate(conn, version)


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) a warehouse file with the schema applied.

    A file that is not DuckDB's is refused before DuckDB opens it (`duckdb.IOException`
    saying what it is), never read by an extension DuckDB would download."""
    problem = duckdb_file_problem(path)
    if problem is not None:
        raise duckdb.IOException(f"{path}: {problem}")
    conn = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        apply_schema(conn)
    return conn
