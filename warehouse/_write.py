"""The one write path into the warehouse, used by the ingest's sink.

Exactly-once: the sink writes a batch's rows and the Kafka offsets that batch advances
in one DuckDB transaction, and on (re)start seeks to the stored offsets. Rows are also
keyed by (device id, envelope id), so a message produced twice (a client retry after a
lost 202) adds nothing either.

Deletion requests (a device revoked consent for a tier) are applied in the same
transaction: recorded in `deletion_requests` (keyed by device and request id, so a
replay is a no-op and no device can pre-empt another's request id), and the device's
`released_values` of that tier deleted for every envelope whose window started before
the request or that the ingest received before it. An envelope of that kind arriving
later (a replay, a retry) has those rows filtered out on insert, so a deletion sticks in
any order. `enforce_retention` deletes each tier's rows past its retention (content
first: it has the shortest).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from schemas import (
    CounterAggregate,
    HistogramAggregate,
    IngestedDeletionRequest,
    IngestedEnvelope,
    NoiseSpec,
    TotalAggregate,
)
from warehouse._compact import record_erasure
from warehouse._dead_letters import DeadLetter, insert_dead_letters
from warehouse._times import check_storable_time, epoch_us

__all__ = [
    "PartitionOffset",
    "WriteResult",
    "load_arrow_conversions",
    "stored_offsets",
    "write_envelopes",
]

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


_ENVELOPE_TYPES = [
    pa.string(),  # envelope_id, cast to UUID by the insert
    pa.string(),
    # sequence, as text: DuckDB's cast refuses one past BIGINT (ConversionException,
    # dead-lettered) as the row-wise insert did, where Arrow would say OverflowError.
    pa.string(),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.string(),
    pa.timestamp("us", tz="UTC"),
    pa.timestamp("us", tz="UTC"),
    pa.timestamp("us", tz="UTC"),
    pa.timestamp("us", tz="UTC"),
    pa.string(),
    pa.string(),
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


_VALUES_MAX_ROWS = 16


def load_arrow_conversions() -> None:
    """Convert an empty column once, so pyarrow loads now what it loads lazily on its
    first conversion of a Python list: pandas among it, when pandas is installed (pyarrow
    checks whether a list is a pandas object), about a second of CPU and tens of
    thousands of objects. A sink calls it when it opens, so a long-running process pays
    that at start-up, before its start-up objects are frozen out of the garbage
    collector's sight (`ingest._process`), not on its first batch."""
    pa.array([], type=pa.string())


def _insert_arrow(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    rows: Sequence[tuple[Any, ...]],
    types: Sequence[pa.DataType],
) -> None:
    """Insert `rows` (tuples in the table's column order): a few as one parameterised
    VALUES statement, more as one Arrow batch (each costs about 2 ms of CPU at 6 rows,
    and VALUES grows faster than linearly past a few dozen)."""
    if len(rows) <= _VALUES_MAX_ROWS:
        marks = "(" + ", ".join("?" * len(types)) + ")"
        conn.execute(
            f"INSERT INTO {table} VALUES " + ", ".join([marks] * len(rows)),
            [value for row in rows for value in row],
        )
        return
    batch = pa.Table.from_arrays(
        [pa.array(col, type=typ) for col, typ in zip(zip(*rows, strict=True), types, strict=True)],
        names=[f"c{i}" for i in range(len(types))],
    )
    # Not a registered view: unregistering one in a transaction a refused row aborted
    # would raise over the refusal (TransactionException instead of, say, a conversion).
    conn.from_arrow(batch).insert_into(table)


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
    dead_letters: int = 0
    """Dead letters newly recorded (one recorded before, e.g. by a redelivery, is not)."""


def stored_offsets(conn: duckdb.DuckDBPyConnection, group: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> next offset to consume, as committed with the rows."""
    rows = conn.execute(
        "SELECT topic, kafka_partition, next_offset FROM consumer_offsets WHERE consumer_group = ?",
        [group],
    ).fetchall()
    return {(t, p): o for t, p, o in rows}


def _noise_cols(noise: NoiseSpec) -> tuple[Any, ...]:
    # A StrEnum member is a str: stored as its value without the `.value` property.
    return (noise.mechanism, noise.scale, noise.epsilon, noise.rho, noise.lower, noise.upper)


_ATTRIBUTES_JSON: dict[tuple[tuple[str, str], ...], str] = {}
_ATTRIBUTES_JSON_MAX = 4096


def _attributes_json(attributes: Mapping[str, str]) -> str:
    """`attributes` as canonical JSON (sorted keys, no spaces): the column's form. A
    signal's label combinations repeat across a fleet, so the encoding is remembered
    (at most `_ATTRIBUTES_JSON_MAX` of them, then forgotten at once)."""
    key = tuple(sorted(attributes.items()))
    text = _ATTRIBUTES_JSON.get(key)
    if text is None:
        if len(_ATTRIBUTES_JSON) >= _ATTRIBUTES_JSON_MAX:
            _ATTRIBUTES_JSON.clear()
        text = json.dumps(dict(key), separators=(",", ":"))
        _ATTRIBUTES_JSON[key] = text
    return text


def _value_rows(item: IngestedEnvelope, envelope_id: str) -> Iterable[tuple[Any, ...]]:
    env = item.envelope
    head = (envelope_id, env.device_id, env.region, env.window_start, env.window_end)
    for agg in env.aggregates:
        attrs = _attributes_json(agg.attributes)
        meta = (agg.signal, agg.tier, agg.unit)
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
        check_storable_time("requested_at", d.requested_at)
        check_storable_time("received_at", item.received_at)
        # Unique per device: another device's request with the same id is its own.
        known = conn.execute(
            "SELECT count(*) FROM deletion_requests WHERE device_id = ? AND request_id = ?",
            [d.device_id, str(d.request_id)],
        ).fetchall()
        if known != [(0,)]:
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
        # A dead letter's tier is unknown (its bytes did not decode or store): every
        # dead letter of the device goes, whatever tier the request names.
        letters = conn.execute(
            "DELETE FROM dead_letters WHERE device_id = ?", [d.device_id]
        ).fetchall()
        rows = (
            (int(deleted[0]) if deleted else 0)
            + (int(reports[0]) if reports else 0)
            + int(letters[0][0])
        )
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
                rows,
            ],
        )
        if rows:
            # The deleted bytes stay in the file until it is rewritten (warehouse._compact).
            record_erasure(conn, "deletion_request", str(d.request_id), rows, device_id=d.device_id)
        applied += 1
    return applied


_Deletions = Mapping[tuple[str, str], list[tuple[int, int]]]
"""(device, tier) -> [(requested_at, received_at)] of recorded deletions, in epoch µs."""


def _deleted_cells(
    conn: duckdb.DuckDBPyConnection, fresh: Sequence[IngestedEnvelope]
) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(device, tier) -> [(requested_at, received_at)] of recorded deletions, as
    microseconds since the epoch: a row an older ingest recorded with a time outside
    Python's calendar comes back as a number, not as DuckDB's text (`warehouse._times`)."""
    devices = list({i.envelope.device_id for i in fresh})
    rows = conn.execute(
        "SELECT device_id, tier, epoch_us(requested_at), epoch_us(received_at) "
        "FROM deletion_requests WHERE device_id IN (SELECT unnest(?::VARCHAR[]))",
        [devices],
    ).fetchall()
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for device, tier, requested, received in rows:
        out.setdefault((device, tier), []).append((requested, received))
    return out


def _covered(item: IngestedEnvelope, tier: str, deletions: _Deletions) -> bool:
    env = item.envelope
    return any(
        epoch_us(env.window_start) < requested or epoch_us(item.received_at) <= received
        for requested, received in deletions.get((env.device_id, tier), ())
    )


def _check_times(item: IngestedEnvelope) -> None:
    """Raise `UnstorableValue` if a time of `item` could not be given back."""
    env = item.envelope
    check_storable_time("window_start", env.window_start)
    check_storable_time("window_end", env.window_end)
    check_storable_time("sent_at", env.sent_at)
    check_storable_time("received_at", item.received_at)


def _store_reports(
    conn: duckdb.DuckDBPyConnection,
    fresh: Sequence[IngestedEnvelope],
    deletions: _Deletions,
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


_CLUSTER_GAP = timedelta(days=2)
"""Windows starting further apart than this are searched for copies separately..."""
_MAX_SEARCHES = 8
"""...in at most this many searches (the widest gaps split them): a batch of windows
scattered over years costs a few bounded searches, not one per window."""


def _window_clusters(
    items: Sequence[IngestedEnvelope], envelope_ids: Sequence[str]
) -> list[tuple[datetime, datetime, list[str]]]:
    """(first start, last start, envelope ids) of each cluster of the items' window
    starts: split where consecutive starts are more than `_CLUSTER_GAP` apart, at the
    `_MAX_SEARCHES - 1` widest such gaps at most. A batch of a fleet's recent windows is
    one or two clusters."""
    starts = [i.envelope.window_start for i in items]
    if not starts:
        return []
    first, last = min(starts), max(starts)
    if last - first <= _CLUSTER_GAP:
        # The common batch (a fleet's recent windows): one search, without the sort (a
        # comparison of two of pydantic's aware times costs two offset calls).
        return [(first, last, list(envelope_ids))]
    order = sorted(range(len(items)), key=lambda i: starts[i])
    starts = [starts[i] for i in order]
    gaps = [
        (starts[k] - starts[k - 1], k)
        for k in range(1, len(starts))
        if starts[k] - starts[k - 1] > _CLUSTER_GAP
    ]
    cuts = sorted(k for _, k in sorted(gaps, reverse=True)[: _MAX_SEARCHES - 1])
    clusters: list[tuple[datetime, datetime, list[str]]] = []
    for lo, hi in zip([0, *cuts], [*cuts, len(order)], strict=True):
        if lo < hi:
            ids = [envelope_ids[i] for i in order[lo:hi]]
            clusters.append((starts[lo], starts[hi - 1], ids))
    return clusters


def write_envelopes(
    conn: duckdb.DuckDBPyConnection,
    items: Sequence[IngestedEnvelope | IngestedDeletionRequest],
    *,
    group: str | None = None,
    offsets: Sequence[PartitionOffset] = (),
    dead_letters: Sequence[DeadLetter] = (),
) -> WriteResult:
    """Insert envelopes not seen before, apply deletion requests, record `dead_letters`
    (messages of the same batch that cannot be stored) and advance `offsets`, in one
    transaction.

    Duplicates (same envelope id, already stored or twice in `items`) are skipped; a
    deletion request or dead letter already recorded is a no-op. A row DuckDB refuses
    raises one of `warehouse.UNSTORABLE` and nothing is written.
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
        for lo, hi, ids in _window_clusters(items, [e for _, e in keys]):
            # A copy of an envelope has its window: bounding the search by the batch's
            # windows lets DuckDB skip every row group outside them (zone maps), so the
            # check costs the same at a billion stored rows as at a thousand (over 3M
            # rows: 3 ms instead of 54). One search per cluster of nearby windows: one
            # envelope of an old window (year 1, say) would otherwise stretch the bound
            # over the whole table (97 ms instead of 4 at 2M envelopes). An envelope id
            # reused with another window is not a copy; the primary key still refuses it
            # (a dead letter, not a second row).
            rows = conn.execute(
                "SELECT device_id, CAST(envelope_id AS VARCHAR) FROM envelopes "
                "WHERE window_start BETWEEN ? AND ? "
                "AND envelope_id IN (SELECT unnest(?::UUID[]))",
                [lo, hi, ids],
            ).fetchall()
            seen.update((d, e) for d, e in rows)
        fresh: list[IngestedEnvelope] = []
        fresh_ids: list[str] = []
        reports_refused = 0
        for item, key in zip(items, keys, strict=True):
            if key not in seen:
                _check_times(item)
                seen.add(key)
                fresh.append(item)
                fresh_ids.append(key[1])
        if fresh:
            # One columnar insert: executemany costs a round trip (about 1 ms) per row.
            _insert_arrow(
                conn,
                "envelopes",
                [
                    (
                        envelope_id,
                        e.device_id,
                        str(e.sequence),
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
                    for i, envelope_id in zip(fresh, fresh_ids, strict=True)
                    for e in (i.envelope,)
                ],
                _ENVELOPE_TYPES,
            )
            deletions = _deleted_cells(conn, fresh)
            values = [
                row
                for i, envelope_id in zip(fresh, fresh_ids, strict=True)
                for row in _value_rows(i, envelope_id)
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
        letters = insert_dead_letters(
            conn, dead_letters, group=group, recorded_at=datetime.now(UTC)
        )
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
        dead_letters=letters,
    )
