"""The DuckDB sink, and the embedded mode (no Kafka) end to end."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.public import PublicKey

from ingest import DeadLetter, DuckDBSink, IngestSettings, create_app
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client, ingested
from warehouse import SCHEMA_VERSION, PartitionOffset, WriteResult, connect, write_envelopes


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "wh.duckdb", group="g1")
    yield s
    s.close()


def test_written_envelopes_land_as_rows(sink: DuckDBSink) -> None:
    device = Device()
    result = sink.write([ingested(device), ingested(device)])
    assert (result.inserted, result.duplicates) == (2, 0)
    assert sink.envelope_count() == 2
    values = sink.connection.execute(
        "SELECT signal, kind, value FROM released_values ORDER BY envelope_id"
    ).fetchall()
    assert values == [("inference.requests", "counter", 3.0)] * 2


def test_a_redelivered_batch_adds_nothing_but_still_advances_offsets(sink: DuckDBSink) -> None:
    batch = [ingested(Device()) for _ in range(3)]
    sink.write(batch, [PartitionOffset("t", 0, 3)])
    result = sink.write(batch, [PartitionOffset("t", 0, 6)])
    assert (result.inserted, result.duplicates) == (0, 3)
    assert sink.envelope_count() == 3
    assert sink.stored_offsets() == {("t", 0): 6}


def test_offsets_are_kept_per_group(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    first = DuckDBSink(path, group="g1")
    first.write([ingested(Device())], [PartitionOffset("t", 1, 10)])
    first.close()
    again = DuckDBSink(path, group="g1")
    other = DuckDBSink(again.connection, group="g2")
    assert again.stored_offsets() == {("t", 1): 10}
    assert other.stored_offsets() == {}
    other.close()  # does not close a connection it was handed
    assert again.envelope_count() == 1
    again.close()


def test_dead_letters_are_recorded_once(sink: DuckDBSink) -> None:
    letter = DeadLetter(
        "decode", "ValueError", "invalid JSON", b"not json", topic="t", partition=0, offset=7
    )
    offsets = [PartitionOffset("t", 0, 8)]
    assert sink.write([], offsets) == WriteResult(0, 0)
    first = sink.connection
    for _ in range(2):  # a redelivery records nothing new
        write_envelopes(first, [], group="g1", offsets=offsets, dead_letters=[letter])
    assert sink.dead_letter_count() == 1
    row = sink.connection.execute(
        "SELECT message_value, error_class, error, consumer_group FROM dead_letters"
    ).fetchone()
    assert row == (b"not json", "ValueError", "invalid JSON", "g1")


async def test_embedded_mode_stores_accepted_envelopes(tmp_path: Path) -> None:
    """Durable in the outbox when answered (`test_outbox_bus`); in the warehouse by the
    time the ingest has stopped."""
    settings = IngestSettings(
        policy_paths=SERVED_POLICIES, region="eu-test", state_dir=tmp_path / "state"
    )
    app = create_app(settings)
    device = Device("eu-test")
    async with asgi_client(app) as client:
        key_b64 = (await client.get("/v1/ingest-key")).json()["public_key"]
        key = PublicKey(base64.b64decode(key_b64))
        envs = [device.envelope() for _ in range(3)]
        resp = await client.post(
            "/v1/envelopes", json={"envelopes": [device.item(key, e) for e in envs]}
        )
        assert resp.status_code == 202
        assert (await client.get("/healthz")).json()["bus"] == "in-process"
    conn = connect(settings.resolved_warehouse_path, read_only=True)
    try:
        ids = {
            r[0]
            for r in conn.execute("SELECT CAST(envelope_id AS VARCHAR) FROM envelopes").fetchall()
        }
    finally:
        conn.close()
    assert ids == {e["envelope_id"] for e in envs}
    assert settings.key_path.exists()  # development: generated into the state dir


def test_an_envelope_id_is_unique_per_device_not_across_devices(sink: DuckDBSink) -> None:
    """A device that learned another's envelope id (the audit log shows them) cannot
    pre-empt it: the victim's envelope with that id is still stored."""
    attacker, victim = Device(), Device()
    victims = ingested(victim)
    stolen = victims.envelope.envelope_id
    squat = ingested(attacker)
    squat = squat.model_copy(
        update={"envelope": squat.envelope.model_copy(update={"envelope_id": stolen})}
    )
    sink.write([squat])
    result = sink.write([victims])
    assert (result.inserted, result.duplicates) == (1, 0)
    rows = sink.connection.execute(
        "SELECT device_id FROM envelopes WHERE envelope_id = ? ORDER BY device_id", [str(stolen)]
    ).fetchall()
    assert sorted(r[0] for r in rows) == sorted([attacker.device_id, victim.device_id])
    # The same device sending the same id again is still a duplicate.
    assert sink.write([victims]).duplicates == 1


def test_a_version_1_warehouse_is_migrated_to_per_device_envelope_ids(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "v1.duckdb"
    old = duckdb.connect(str(path))
    old.execute("CREATE TABLE schema_meta (version INTEGER NOT NULL)")
    old.execute("INSERT INTO schema_meta VALUES (1)")
    old.execute(
        "CREATE TABLE envelopes (envelope_id UUID PRIMARY KEY, device_id VARCHAR NOT NULL, "
        "sequence BIGINT NOT NULL, region VARCHAR NOT NULL, policy_hash VARCHAR NOT NULL, "
        "app_name VARCHAR NOT NULL, app_version VARCHAR NOT NULL, "
        "window_start TIMESTAMPTZ NOT NULL, window_end TIMESTAMPTZ NOT NULL, "
        "sent_at TIMESTAMPTZ NOT NULL, received_at TIMESTAMPTZ NOT NULL, "
        "assurance VARCHAR NOT NULL, key_fingerprint VARCHAR NOT NULL)"
    )
    old.close()
    first = DuckDBSink(path)
    item = ingested(Device())
    first.write([item])
    first.close()
    # Migrated once (to the current version), rows kept, and the new key in force.
    again = DuckDBSink(path)
    assert again.connection.execute("SELECT version FROM schema_meta").fetchall() == [
        (SCHEMA_VERSION,)
    ]
    assert again.envelope_count() == 1
    other = item.model_copy(
        update={"envelope": item.envelope.model_copy(update={"device_id": "dev-someone-else"})}
    )
    assert again.write([other]).inserted == 1
    again.close()


def test_an_envelope_id_reused_for_another_window_is_a_dead_letter_not_a_second_row(
    sink: DuckDBSink,
) -> None:
    """The duplicate check looks only at the batch's windows (a copy has its window);
    the same id from the same device with another window is no copy, and the primary
    key refuses it: dead-lettered, the first row kept, the rest of the batch stored."""
    device = Device()
    first = ingested(device)
    reused = ingested(device)  # the device's next window...
    reused = reused.model_copy(
        update={
            "envelope": reused.envelope.model_copy(
                update={"envelope_id": first.envelope.envelope_id}
            )
        }
    )
    sink.write([first])
    later = Device()
    later.envelope(), later.envelope()  # its third window: the batch spans 11:00-12:00
    other = ingested(later)
    result = sink.write([reused, other])
    assert (result.inserted, result.dead_letters) == (1, 1)
    assert sink.envelope_count() == 2
    (start,) = sink.connection.execute(
        "SELECT window_start FROM envelopes WHERE device_id = ?", [device.device_id]
    ).fetchone()
    assert start == first.envelope.window_start
