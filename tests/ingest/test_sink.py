"""The DuckDB sink, and the embedded mode (no Kafka) end to end."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nacl.public import PublicKey

from analytics.warehouse import PartitionOffset, connect
from ingest import DeadLetter, DuckDBSink, IngestSettings, create_app
from schemas import EnvelopeV1, IngestedEnvelope
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client


def _ingested(device: Device) -> IngestedEnvelope:
    return IngestedEnvelope(
        envelope=EnvelopeV1.model_validate_json(json.dumps(device.envelope())),
        received_at=datetime(2025, 1, 1, 11, tzinfo=UTC),
        key_fingerprint="ab" * 32,
        assurance="software",
    )


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "wh.duckdb", group="g1")
    yield s
    s.close()


def test_written_envelopes_land_as_rows(sink: DuckDBSink) -> None:
    device = Device()
    result = sink.write([_ingested(device), _ingested(device)])
    assert (result.inserted, result.duplicates) == (2, 0)
    assert sink.envelope_count() == 2
    values = sink.connection.execute(
        "SELECT signal, kind, value FROM released_values ORDER BY envelope_id"
    ).fetchall()
    assert values == [("inference.requests", "counter", 3.0)] * 2


def test_a_redelivered_batch_adds_nothing_but_still_advances_offsets(sink: DuckDBSink) -> None:
    batch = [_ingested(Device()) for _ in range(3)]
    sink.write(batch, [PartitionOffset("t", 0, 3)])
    result = sink.write(batch, [PartitionOffset("t", 0, 6)])
    assert (result.inserted, result.duplicates) == (0, 3)
    assert sink.envelope_count() == 3
    assert sink.stored_offsets() == {("t", 0): 6}


def test_offsets_are_kept_per_group(tmp_path: Path) -> None:
    path = tmp_path / "wh.duckdb"
    first = DuckDBSink(path, group="g1")
    first.write([_ingested(Device())], [PartitionOffset("t", 1, 10)])
    first.close()
    again = DuckDBSink(path, group="g1")
    other = DuckDBSink(again.connection, group="g2")
    assert again.stored_offsets() == {("t", 1): 10}
    assert other.stored_offsets() == {}
    other.close()  # does not close a connection it was handed
    assert again.envelope_count() == 1
    again.close()


def test_dead_letters_are_recorded_once(sink: DuckDBSink) -> None:
    letter = DeadLetter("t", 0, 7, b"k", b"not json", "invalid JSON")
    sink.write_dead_letters([letter])
    sink.write_dead_letters([letter])
    assert sink.dead_letter_count() == 1
    row = sink.connection.execute(
        "SELECT message_value, error, consumer_group FROM dead_letters"
    ).fetchone()
    assert row == (b"not json", "invalid JSON", "g1")


async def test_embedded_mode_stores_accepted_envelopes_before_answering(tmp_path: Path) -> None:
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
