"""Deleted means gone: values a deletion request or retention deleted are absent from the
warehouse's files as bytes once the sink or `quietwire retention` has run, and a value
that was not deleted is still found, so the scan can see what it looks for.

The connection stores columns uncompressed (`force_compression`): then every stored
double is in the file as its 8 IEEE bytes and every label as its UTF-8 text, the case
where deleted data is easiest to recover. The first test shows the scan finding deleted
values in a file that was not rewritten; the others show them gone after the rewrite.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import duckdb

from ingest import DuckDBSink
from schemas import DeletionRequestV1, EnvelopeV1, IngestedDeletionRequest, IngestedEnvelope, Tier
from tests.ingest.kit import FIRST_WINDOW, Device, counter_aggregate
from tests.warehouse._bytes import warehouse_bytes
from warehouse import (
    PartitionOffset,
    apply_retention,
    compact,
    connect,
    pending_erasures,
    write_envelopes,
)
from warehouse._dead_letters import DeadLetter, insert_dead_letters

RECEIVED = FIRST_WINDOW + timedelta(hours=11)
VALUES = 32


def _values(seed: int) -> list[float]:
    # Doubles whose 8 bytes occur nowhere else: an odd mantissa far from round numbers.
    return [seed + 0.1234567890123 * (i + 1) + i * 1e-9 for i in range(VALUES)]


def _label(tag: str, i: int) -> str:
    return f"qw-{tag}-{i:02d}-{uuid.uuid4().hex}"


def _envelopes(
    device: Device, values: Sequence[float], labels: Sequence[str]
) -> list[IngestedEnvelope]:
    out = []
    for value, label in zip(values, labels, strict=True):
        aggregate = counter_aggregate(value)
        aggregate["attributes"] = {**aggregate["attributes"], "route": label}
        out.append(
            IngestedEnvelope(
                envelope=EnvelopeV1.model_validate_json(
                    json.dumps(device.envelope(aggregates=[aggregate]))
                ),
                received_at=RECEIVED,
                key_fingerprint="ab" * 32,
                assurance="software",
            )
        )
    return out


def _deletion(device: Device, tier: Tier) -> IngestedDeletionRequest:
    return IngestedDeletionRequest(
        deletion=DeletionRequestV1(
            request_id=uuid.uuid4(),
            device_id=device.device_id,
            region=device.region,
            tier=tier,
            requested_at=RECEIVED + timedelta(hours=1),
            consent_hash="cd" * 32,
            consent_version=2,
        ),
        received_at=RECEIVED + timedelta(hours=1),
        key_fingerprint="ab" * 32,
    )


def _scan(path: Path, values: Sequence[float], labels: Sequence[str]) -> tuple[int, int]:
    """(values, labels) found as bytes in the warehouse file and every file beside it
    named after it (its WAL, a leftover rewrite)."""
    data = warehouse_bytes(path)
    found_values = sum(struct.pack("<d", v) in data for v in values)
    found_labels = sum(label.encode() in data for label in labels)
    return found_values, found_labels


def _uncompressed(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("SET force_compression = 'uncompressed'")


def _tier(device: Device) -> Tier:
    envelope = EnvelopeV1.model_validate_json(json.dumps(device.envelope()))
    return envelope.aggregates[0].tier


def test_without_a_rewrite_deleted_values_stay_in_the_file(tmp_path: Path) -> None:
    """The problem, and proof that the scan sees it: DELETE and CHECKPOINT leave them."""
    path = tmp_path / "wh.duckdb"
    gone, gone_labels = _values(1000), [_label("gone", i) for i in range(VALUES)]
    device = Device()
    conn = connect(path)
    _uncompressed(conn)
    write_envelopes(conn, _envelopes(device, gone, gone_labels))
    conn.execute("CHECKPOINT")
    write_envelopes(conn, [_deletion(device, _tier(device))])
    conn.execute("CHECKPOINT")
    assert conn.execute("SELECT count(*) FROM released_values").fetchone() == (0,)
    assert pending_erasures(conn) == 1
    conn.close()

    assert _scan(path, gone, gone_labels) == (VALUES, VALUES)


def test_a_deletion_request_through_the_sink_leaves_no_bytes(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    revoked, kept = Device(), Device()
    gone, gone_labels = _values(2000), [_label("gone", i) for i in range(VALUES)]
    stay, stay_labels = _values(3000), [_label("stay", i) for i in range(VALUES)]
    sink = DuckDBSink(path, group="g1", compact_interval=3600)
    _uncompressed(sink.connection)
    sink.write(_envelopes(revoked, gone, gone_labels) + _envelopes(kept, stay, stay_labels))
    sink.connection.execute("CHECKPOINT")  # the values are in the file's blocks now
    result = sink.write([_deletion(revoked, _tier(revoked))], [PartitionOffset("t", 0, 65)])
    assert result.deletions == 1
    # The sink rewrote the file at once (first deletion since it opened).
    assert pending_erasures(sink.connection) == 0
    assert sink.stored_offsets() == {("t", 0): 65}
    sink.close()

    assert _scan(path, gone, gone_labels) == (0, 0)
    assert _scan(path, stay, stay_labels) == (VALUES, VALUES)
    with duckdb.connect(str(path), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM released_values").fetchone() == (VALUES,)
        erased = conn.execute("SELECT source, rows_deleted, erased_at FROM erasures").fetchall()
    assert [(s, n) for s, n, _ in erased] == [("deletion_request", VALUES)]
    assert erased[0][2] is not None


def test_retention_then_rewrite_leaves_no_bytes(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    old, recent = Device(), Device()
    gone, gone_labels = _values(4000), [_label("gone", i) for i in range(VALUES)]
    stay, stay_labels = _values(5000), [_label("stay", i) for i in range(VALUES)]
    conn = connect(path)
    _uncompressed(conn)
    write_envelopes(conn, _envelopes(old, gone, gone_labels))
    later = [
        e.model_copy(
            update={
                "envelope": e.envelope.model_copy(
                    update={
                        "window_start": e.envelope.window_start + timedelta(days=200),
                        "window_end": e.envelope.window_end + timedelta(days=200),
                    }
                )
            }
        )
        for e in _envelopes(recent, stay, stay_labels)
    ]
    write_envelopes(conn, later)
    conn.execute("CHECKPOINT")
    tier = _tier(old)
    run = apply_retention(conn, {tier: 100}, RECEIVED + timedelta(days=150))
    assert run.by_tier[tier.value] == VALUES
    done = compact(conn, path)
    assert (done.erasures, done.rows > 0) == (1, True)

    assert _scan(path, gone, gone_labels) == (0, 0)
    assert _scan(path, stay, stay_labels) == (VALUES, VALUES)
    assert not (tmp_path / "wh.duckdb.wal").exists()


def _letters(device: str, markers: Sequence[str]) -> list[DeadLetter]:
    return [
        DeadLetter(
            stage="store",
            error_class="ConversionException",
            error="value out of range",
            value=json.dumps({"device_id": device, "marker": m}).encode(),
            key=device.encode(),
            envelope_id=str(uuid.uuid4()),
            device_id=device,
        )
        for m in markers
    ]


def test_dead_letters_follow_deletion_requests_and_retention(tmp_path: Path) -> None:
    """A dead letter may hold any tier's data: a device's deletion request (any tier)
    deletes its letters, retention keeps them no longer than the shortest-kept tier, and
    after the rewrite their bytes are gone while another device's letter stays."""
    path = tmp_path / "w.duckdb"
    revoked, kept = Device(), Device()
    gone = [_label("letter-revoked", i) for i in range(4)]
    old = [_label("letter-old", i) for i in range(4)]
    control = [_label("letter-kept", i) for i in range(4)]
    conn = connect(path)
    _uncompressed(conn)
    conn.execute("BEGIN TRANSACTION")
    insert_dead_letters(conn, _letters(revoked.device_id, gone), group=None, recorded_at=RECEIVED)
    insert_dead_letters(
        conn, _letters(kept.device_id, old), group=None, recorded_at=RECEIVED - timedelta(days=30)
    )
    insert_dead_letters(conn, _letters(kept.device_id, control), group=None, recorded_at=RECEIVED)
    conn.execute("COMMIT")
    write_envelopes(conn, [_deletion(revoked, Tier.HEALTH)])
    run = apply_retention(conn, {Tier.HEALTH: 395, Tier.PERFORMANCE: 90, Tier.CONTENT: 7}, RECEIVED)
    assert run.deleted["content"]["dead_letters"] == 4  # the shortest-kept tier's days
    compact(conn, path)
    conn.close()
    assert _scan(path, [], gone) == (0, 0)
    assert _scan(path, [], old) == (0, 0)
    assert _scan(path, [], control) == (0, 4)
