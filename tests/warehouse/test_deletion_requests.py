"""Deletion requests in the warehouse: one device's request never fails another's
writes, and request ids are unique per device, not across devices."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from ingest import DuckDBSink
from schemas import DeletionRequestV1, IngestedDeletionRequest, IngestedEnvelope, Tier
from tests.ingest.kit import Device, ingested
from warehouse import connect, write_envelopes

RECEIVED = datetime(2025, 1, 1, 11, tzinfo=UTC)
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
