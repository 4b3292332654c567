"""Deletion requests in the warehouse: one device's request never fails another's
writes, and request ids are unique per device, not across devices."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from ingest import DuckDBSink
from schemas import DeletionRequestV1, IngestedDeletionRequest, IngestedEnvelope, Tier
from tests.ingest.kit import FIRST_WINDOW, Device, ingested
from warehouse import SCHEMA_VERSION, connect, write_envelopes

RECEIVED = FIRST_WINDOW + timedelta(hours=11)
"""When the kit's envelopes are received (`ingested`)."""

YEAR_10000 = "9999-12-31T23:59:59-12:00"
YEAR_0 = "0001-01-01T00:00:00+14:00"


def _deletion(
    device: Device,
    *,
    request_id: uuid.UUID | None = None,
    requested_at: datetime = RECEIVED,
    received_at: datetime = RECEIVED + timedelta(hours=1),
) -> IngestedDeletionRequest:
    return IngestedDeletionRequest(
        deletion=DeletionRequestV1(
            request_id=request_id or uuid.uuid4(),
            device_id=device.device_id,
            region=device.region,
            tier=Tier.PERFORMANCE,
            requested_at=requested_at,
            consent_hash="cd" * 32,
            consent_version=2,
        ),
        received_at=received_at,
        key_fingerprint="ab" * 32,
    )


def _values(conn: duckdb.DuckDBPyConnection, device: Device) -> int:
    ((n,),) = conn.execute(
        "SELECT count(*) FROM released_values WHERE device_id = ?", [device.device_id]
    ).fetchall()
    return int(n)


def _envelopes(conn: duckdb.DuckDBPyConnection, device: Device) -> int:
    ((n,),) = conn.execute(
        "SELECT count(*) FROM envelopes WHERE device_id = ?", [device.device_id]
    ).fetchall()
    return int(n)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "wh.duckdb", group="g1")
    yield s
    s.close()


def test_a_stored_deletion_time_python_cannot_read_fails_no_batch(tmp_path: Path) -> None:
    """Rows an older ingest recorded with requested_at at the calendar's edge (DuckDB
    hands year 10000 and year 0 back to Python as text): a batch holding envelopes of
    those devices and of others is stored whole, and each deletion covers exactly what
    its time says (year 10000: every window; year 0: none, only what came before it)."""
    conn = connect(tmp_path / "wh.duckdb")
    late, early, others = Device(), Device(), [Device(), Device()]
    for device, requested_at in ((late, YEAR_10000), (early, YEAR_0)):
        conn.execute(
            "INSERT INTO deletion_requests (request_id, device_id, region, tier, requested_at, "
            "received_at, consent_hash, key_fingerprint, rows_deleted) "
            "VALUES (?, ?, ?, 'performance', ?::TIMESTAMPTZ, ?, ?, ?, 0)",
            [
                str(uuid.uuid4()),
                device.device_id,
                device.region,
                requested_at,
                RECEIVED - timedelta(hours=1),
                "cd" * 32,
                "ab" * 32,
            ],
        )
    stored = conn.execute("SELECT requested_at FROM deletion_requests").fetchall()
    assert {type(r[0]) for r in stored} == {str}  # what made `_covered` raise TypeError
    batch = [ingested(d) for d in (late, early, *others)]
    result = write_envelopes(conn, batch)
    assert (result.inserted, result.dead_letters) == (4, 0)
    assert [_envelopes(conn, d) for d in (late, early, *others)] == [1, 1, 1, 1]
    # year 10000: the window started before it, so its performance values are not kept;
    # year 0: no window starts before it and the envelope came after the request.
    assert [_values(conn, d) for d in (late, early, *others)] == [0, 1, 1, 1]
    conn.close()


def test_a_time_outside_the_calendar_is_a_dead_letter_and_the_batch_stored(
    sink: DuckDBSink,
) -> None:
    """A deletion request or an envelope whose time the warehouse could store but not
    give back as a time (as an older ingest could still hand over) is refused as
    unstorable, with its reason, and every other item of the batch is stored."""
    late, odd, others = Device(), Device(), [Device(), Device()]
    deletion = _deletion(late, requested_at=datetime.fromisoformat(YEAR_10000))
    envelope = ingested(odd)
    edge = envelope.envelope.model_copy(
        update={
            "window_start": datetime.fromisoformat(YEAR_0),
            "window_end": datetime.fromisoformat(YEAR_0) + timedelta(hours=1),
        }
    )
    envelope = envelope.model_copy(update={"envelope": edge})
    batch: list[IngestedEnvelope | IngestedDeletionRequest] = [
        ingested(late),
        deletion,
        envelope,
        *(ingested(d) for d in others),
    ]
    result = sink.write(batch)
    assert (result.inserted, result.deletions, result.dead_letters) == (3, 0, 2)
    conn = sink.connection
    assert [_envelopes(conn, d) for d in (late, odd, *others)] == [1, 0, 1, 1]
    letters = conn.execute(
        "SELECT device_id, error_class, error FROM dead_letters ORDER BY error"
    ).fetchall()
    assert [(d, c) for d, c, _ in letters] == [
        (late.device_id, "UnstorableValue"),
        (odd.device_id, "UnstorableValue"),
    ]
    assert letters[0][2].startswith(f"requested_at {YEAR_10000} is outside years 1 to 9999")
    assert letters[1][2].startswith(f"window_start {YEAR_0} is outside years 1 to 9999")
    assert conn.execute("SELECT count(*) FROM deletion_requests").fetchall() == [(0,)]


def _erasures(conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str, bool]]:
    rows = conn.execute(
        "SELECT CAST(source_id AS VARCHAR), device_id, erased_at IS NOT NULL FROM erasures "
        "WHERE source = 'deletion_request' ORDER BY device_id"
    ).fetchall()
    return [(str(r), str(d), bool(e)) for r, d, e in rows]


def test_two_devices_using_one_request_id_both_get_their_deletion(sink: DuckDBSink) -> None:
    """Request ids are in the audit log: a device that used the victim's id first once
    made the victim's deletion a silent no-op after its 202. Each is applied, each has
    its erasure, and a replay of either is still applied once."""
    attacker, victim = Device(), Device()
    sink.write([ingested(attacker), ingested(victim)])
    shared = uuid.uuid4()
    first = _deletion(attacker, request_id=shared)
    assert sink.write([first]).deletions == 1
    second = _deletion(victim, request_id=shared)
    assert sink.write([second]).deletions == 1
    conn = sink.connection
    assert (_values(conn, attacker), _values(conn, victim)) == (0, 0)
    assert sorted(
        conn.execute("SELECT device_id, rows_deleted FROM deletion_requests").fetchall()
    ) == sorted([(attacker.device_id, 1), (victim.device_id, 1)])
    assert {(r, d) for r, d, _ in _erasures(conn)} == {
        (str(shared), attacker.device_id),
        (str(shared), victim.device_id),
    }
    assert sink.write([first, second]).deletions == 0  # replays


def _version_2_file(path: Path, owner: Device, request_id: uuid.UUID) -> None:
    """A warehouse as schema version 2 left it: request ids unique across devices,
    erasures without a device; `owner`'s request applied and erased."""
    old = duckdb.connect(str(path))
    old.execute("CREATE TABLE schema_meta (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_meta VALUES (2)")
    old.execute(
        "CREATE TABLE deletion_requests (request_id UUID PRIMARY KEY, "
        "device_id VARCHAR NOT NULL, region VARCHAR NOT NULL, tier VARCHAR NOT NULL, "
        "requested_at TIMESTAMPTZ NOT NULL, received_at TIMESTAMPTZ NOT NULL, "
        "consent_hash VARCHAR NOT NULL, key_fingerprint VARCHAR NOT NULL, "
        "rows_deleted BIGINT NOT NULL)"
    )
    old.execute(
        "CREATE TABLE erasures (source VARCHAR NOT NULL, source_id UUID NOT NULL, "
        "deleted_at TIMESTAMPTZ NOT NULL, rows_deleted BIGINT NOT NULL, "
        "erased_at TIMESTAMPTZ, PRIMARY KEY (source, source_id))"
    )
    old.execute(
        "INSERT INTO deletion_requests VALUES (?, ?, 'eu-test', 'performance', ?, ?, ?, ?, 1)",
        [str(request_id), owner.device_id, RECEIVED, RECEIVED, "cd" * 32, "ab" * 32],
    )
    old.execute(
        "INSERT INTO erasures VALUES ('deletion_request', ?, ?, 1, ?), "
        "('retention', ?, ?, 5, NULL)",
        [str(request_id), RECEIVED, RECEIVED, str(uuid.uuid4()), RECEIVED],
    )
    old.close()


def test_a_version_2_warehouse_is_migrated_to_per_device_request_ids(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    owner, victim = Device(), Device()
    shared = uuid.uuid4()
    _version_2_file(path, owner, shared)
    conn = connect(path)
    assert conn.execute("SELECT version FROM schema_meta").fetchall() == [(SCHEMA_VERSION,)]
    assert conn.execute(
        "SELECT CAST(request_id AS VARCHAR), device_id FROM deletion_requests"
    ).fetchall() == [(str(shared), owner.device_id)]
    # The old erasure is tied to its request's device; the retention run's to none.
    assert _erasures(conn) == [(str(shared), owner.device_id, True)]
    assert conn.execute(
        "SELECT device_id, rows_deleted, erased_at IS NULL FROM erasures WHERE source = 'retention'"
    ).fetchall() == [("", 5, True)]
    write_envelopes(conn, [ingested(victim)])
    assert write_envelopes(conn, [_deletion(victim, request_id=shared)]).deletions == 1
    assert _values(conn, victim) == 0
    # The victim's erasure is its own, pending: the next rewrite takes its bytes out.
    assert _erasures(conn) == [
        (str(shared), d, d == owner.device_id) for d in sorted([owner.device_id, victim.device_id])
    ]
    conn.close()
    assert connect(path).execute("SELECT version FROM schema_meta").fetchall() == [(3,)]
