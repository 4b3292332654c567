"""Nothing a client sends can stop the sink: rows the warehouse refuses, and messages
that do not decode, become dead letters; the rest of their batch is stored."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from ingest import DuckDBSink, InProcessEnvelopeBus
from ingest._sink import SinkItem, SinkMessage
from schemas import IngestedEnvelope
from tests.ingest.kit import FIRST_WINDOW, Device
from warehouse import PartitionOffset, WriteResult, connect


def _honest(device: Device | None = None) -> IngestedEnvelope:
    return IngestedEnvelope.model_validate(
        {
            "envelope": (device or Device()).envelope(),
            "received_at": FIRST_WINDOW + timedelta(hours=11, seconds=10),
            "key_fingerprint": "a" * 64,
            "assurance": "software",
        }
    )


def _poison() -> IngestedEnvelope:
    """An envelope the ingest no longer accepts (its schema bounds `sequence`), as a
    bug or an older ingest could still hand over: DuckDB's BIGINT cannot hold it."""
    item = _honest()
    envelope = item.envelope.model_copy(update={"sequence": 2**63})
    return item.model_copy(update={"envelope": envelope})


def _stored_ids(sink: DuckDBSink) -> set[str]:
    rows = sink.connection.execute("SELECT CAST(envelope_id AS VARCHAR) FROM envelopes").fetchall()
    return {r[0] for r in rows}


def _letters(sink: DuckDBSink) -> list[tuple[object, ...]]:
    return sink.connection.execute(
        "SELECT stage, topic, kafka_partition, kafka_offset, envelope_id, device_id, "
        "error_class, message_key, message_value FROM dead_letters ORDER BY letter_id"
    ).fetchall()


def _message(offset: int, value: bytes | None, key: bytes | None = b"dev") -> SinkMessage:
    return SinkMessage("quietwire.envelopes.eu-test", 0, offset, key, value)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "wh.duckdb", group="g1")
    yield s
    s.close()


def test_a_row_duckdb_refuses_is_dead_lettered_and_the_rest_of_the_batch_stored(
    sink: DuckDBSink, caplog: pytest.LogCaptureFixture
) -> None:
    honest = [_honest() for _ in range(7)]
    poison = _poison()
    batch: list[SinkItem] = [*honest[:3], poison, *honest[3:]]
    with caplog.at_level(logging.ERROR, logger="quietwire.ingest.sink"):
        result = sink.write(batch)
    assert (result.inserted, result.dead_letters) == (7, 1)
    assert _stored_ids(sink) == {str(i.envelope.envelope_id) for i in honest}
    (letter,) = _letters(sink)
    env = poison.envelope
    assert letter[:7] == (
        "store",
        None,
        None,
        None,
        str(env.envelope_id),
        env.device_id,
        "ConversionException",
    )
    # Kept as it would have travelled on Kafka: keyed by device, the item's JSON.
    assert letter[7] == env.device_id.encode()
    value = letter[8]
    assert isinstance(value, bytes)
    assert json.loads(value)["envelope"]["sequence"] == 2**63
    assert f"envelope {env.envelope_id}: ConversionException" in caplog.text
    # The same poison handed over again is the same letter.
    assert sink.write([poison]).dead_letters == 0
    assert sink.dead_letter_count() == 1


def test_a_suppressed_count_past_integer_range_is_dead_lettered(sink: DuckDBSink) -> None:
    item = _honest()
    poison = item.model_copy(
        update={"envelope": item.envelope.model_copy(update={"suppressed": {"x.y": 2**31}})}
    )
    result = sink.write([_honest(), poison, _honest()])
    assert (result.inserted, result.dead_letters) == (2, 1)
    assert sink.envelope_count() == 2


def test_kafka_messages_that_do_not_decode_are_dead_lettered_with_their_offsets(
    sink: DuckDBSink,
) -> None:
    good = [_honest() for _ in range(3)]
    envelope_shaped = json.dumps(
        {"envelope": {"envelope_id": "e-1", "device_id": "dev-x"}, "junk": 1}
    ).encode()
    messages = [
        _message(0, good[0].model_dump_json().encode()),
        _message(1, b"not json at all", key=None),
        _message(2, good[1].model_dump_json().encode()),
        _message(3, None),  # a tombstone
        _message(4, envelope_shaped),
        _message(5, good[2].model_dump_json().encode()),
    ]
    offsets = [PartitionOffset("quietwire.envelopes.eu-test", 0, 6)]
    result = sink.store(messages, offsets)
    assert (result.inserted, result.dead_letters) == (3, 3)
    assert sink.stored_offsets() == {("quietwire.envelopes.eu-test", 0): 6}
    letters = _letters(sink)
    assert [(stage, off, cls) for stage, _, _, off, _, _, cls, _, _ in letters] == [
        ("decode", 1, "ValidationError"),
        ("decode", 3, "ValueError"),
        ("decode", 4, "ValidationError"),
    ]
    assert letters[0][7:] == (None, b"not json at all")
    assert letters[2][4:6] == ("e-1", "dev-x")  # named when the JSON names them
    # Redelivered (a rebalance before the offsets were stored): nothing doubles.
    again = sink.store(messages, offsets)
    assert (again.inserted, again.duplicates, again.dead_letters) == (0, 3, 0)
    assert sink.dead_letter_count() == 3


def test_a_kafka_message_the_warehouse_refuses_keeps_its_coordinates(tmp_path: Path) -> None:
    """A message that decodes but whose row DuckDB refuses: here the file carries a
    constraint the sink does not know about, the way a foreign value would break one."""
    path = tmp_path / "wh.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute(
        "CREATE TABLE suppressions (envelope_id UUID NOT NULL, device_id VARCHAR NOT NULL, "
        "window_start TIMESTAMPTZ NOT NULL, window_end TIMESTAMPTZ NOT NULL, "
        "signal VARCHAR NOT NULL, releases INTEGER NOT NULL CHECK (releases < 1000))"
    )
    conn.close()
    sink = DuckDBSink(path, group="g1")
    item = _honest()
    refused = item.model_copy(
        update={"envelope": item.envelope.model_copy(update={"suppressed": {"x.y": 5000}})}
    )
    good = [_honest(), _honest()]
    messages = [
        _message(10, good[0].model_dump_json().encode()),
        _message(11, refused.model_dump_json().encode()),
        _message(12, good[1].model_dump_json().encode()),
    ]
    result = sink.store(messages, [PartitionOffset("quietwire.envelopes.eu-test", 0, 13)])
    assert (result.inserted, result.dead_letters) == (2, 1)
    (letter,) = _letters(sink)
    assert letter[:4] == ("store", "quietwire.envelopes.eu-test", 0, 11)
    assert letter[6] == "ConstraintException"
    assert letter[8] == messages[1].value  # the bytes as read
    assert sink.stored_offsets() == {("quietwire.envelopes.eu-test", 0): 13}
    sink.close()


def test_a_failing_warehouse_is_not_blamed_on_a_row(tmp_path: Path) -> None:
    sink = DuckDBSink(tmp_path / "wh.duckdb")
    sink.connection.close()  # the warehouse itself fails: every write would
    with pytest.raises(duckdb.Error):
        sink.write([_honest(), _poison()])


def test_a_dead_letters_table_of_the_first_shape_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    connect(path).close()
    conn = duckdb.connect(str(path))
    conn.execute("DROP TABLE dead_letters")
    conn.execute(
        "CREATE TABLE dead_letters (topic VARCHAR NOT NULL, kafka_partition INTEGER NOT NULL, "
        "kafka_offset BIGINT NOT NULL, consumer_group VARCHAR NOT NULL, message_key BLOB, "
        "message_value BLOB, error VARCHAR NOT NULL, recorded_at TIMESTAMPTZ NOT NULL, "
        "PRIMARY KEY (topic, kafka_partition, kafka_offset))"
    )
    conn.execute(
        "INSERT INTO dead_letters VALUES ('t', 2, 9, 'g1', 'k', 'junk', 'bad', now()), "
        "('t', 2, 10, 'g1', NULL, NULL, 'message has no value', now())"
    )
    conn.close()
    sink = DuckDBSink(path, group="g1")
    rows = sink.connection.execute(
        "SELECT letter_id, stage, error_class, error FROM dead_letters ORDER BY kafka_offset"
    ).fetchall()
    assert rows == [
        ("kafka:t:2:9", "decode", "ValidationError", "bad"),
        ("kafka:t:2:10", "decode", "ValueError", "message has no value"),
    ]
    # The same message read again is the letter already kept.
    assert sink.store([SinkMessage("t", 2, 9, b"k", b"junk")], []).dead_letters == 0
    sink.close()


class _GroupRecordingSink(DuckDBSink):
    """A real DuckDB sink that remembers the groups the embedded bus wrote."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.groups: list[int] = []

    def write(
        self, items: Sequence[SinkItem], offsets: Sequence[PartitionOffset] = ()
    ) -> WriteResult:
        self.groups.append(len(items))
        return super().write(items, offsets)


async def test_embedded_mode_answers_honest_requests_of_a_group_with_a_poison_item(
    tmp_path: Path,
) -> None:
    sink = _GroupRecordingSink(tmp_path / "wh.duckdb")
    bus = InProcessEnvelopeBus(sink, close_sink=False)
    honest = [_honest() for _ in range(9)]
    poison = _poison()
    batches: list[list[SinkItem]] = [[i] for i in [*honest[:4], poison, *honest[4:]]]
    results = await asyncio.gather(*(bus.publish(b) for b in batches), return_exceptions=True)
    await bus.stop()
    assert sink.groups == [10]  # one group commit held them all
    assert results == [None] * 10  # every request acknowledged: none is a 503
    assert _stored_ids(sink) == {str(i.envelope.envelope_id) for i in honest}
    assert sink.dead_letter_count() == bus.dead_letters == 1
    sink.close()
