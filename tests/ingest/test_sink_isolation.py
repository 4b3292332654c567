"""A message that fails every write, with an error that is not a row DuckDB refuses (a
bug a strange but valid envelope brings out), must not stop its Kafka partition: after
`STORE_ATTEMPTS` tries the batch is written in halves, the message is dead-lettered and
the rest stored. A warehouse that takes no write at all still fails the batch.

The failure is injected at the sink's seam into the warehouse (`write_envelopes`), for a
chosen envelope id: no such envelope is known to pass the ingest today."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import ingest._sink as sink_module
from ingest import DuckDBSink
from ingest._sink import SinkMessage
from ingest._sink_consumer import STORE_ATTEMPTS, KafkaSinkConsumer
from schemas import IngestedEnvelope
from tests.ingest.kit import Device, ingested
from warehouse import PartitionOffset

TOPIC = "quietwire.envelopes.eu-test"


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "wh.duckdb", group="g1")
    yield s
    s.close()


def _messages(items: Sequence[IngestedEnvelope]) -> list[SinkMessage]:
    return [
        SinkMessage(TOPIC, 0, offset, b"dev", item.model_dump_json().encode())
        for offset, item in enumerate(items)
    ]


def _failing_for(monkeypatch: pytest.MonkeyPatch, poison: set[str] | None) -> list[int]:
    """Make the warehouse write raise RuntimeError for any batch holding one of
    `poison`'s envelope ids (None: any batch with items); returns the calls' sizes."""
    real = sink_module.write_envelopes
    calls: list[int] = []

    def write(conn: Any, items: Sequence[Any], **kwargs: Any) -> Any:
        calls.append(len(items))
        ids = {str(i.envelope.envelope_id) for i in items if isinstance(i, IngestedEnvelope)}
        if (poison is None and items) or (poison is not None and ids & poison):
            raise RuntimeError("a bug this envelope brings out")
        return real(conn, items, **kwargs)

    monkeypatch.setattr(sink_module, "write_envelopes", write)
    return calls


def _stored(sink: DuckDBSink) -> set[str]:
    rows = sink.connection.execute("SELECT CAST(envelope_id AS VARCHAR) FROM envelopes").fetchall()
    return {r[0] for r in rows}


def _letters(sink: DuckDBSink) -> list[tuple[Any, ...]]:
    return sink.connection.execute(
        "SELECT stage, kafka_offset, envelope_id, error_class FROM dead_letters"
    ).fetchall()


def test_a_message_failing_every_write_is_dead_lettered_and_the_rest_stored(
    sink: DuckDBSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [ingested(Device()) for _ in range(7)]
    poison = str(items[4].envelope.envelope_id)
    _failing_for(monkeypatch, {poison})
    messages = _messages(items)
    offsets = [PartitionOffset(TOPIC, 0, len(items))]
    with pytest.raises(RuntimeError):
        sink.store(messages, offsets)  # as before: the batch fails whole

    result = sink.store_isolating(messages, offsets, RuntimeError("first failure"))

    assert _stored(sink) == {str(i.envelope.envelope_id) for i in items} - {poison}
    assert [(s, o, str(e), c) for s, o, e, c in _letters(sink)] == [
        ("store", 4, poison, "RuntimeError")
    ]
    assert result.inserted == 6
    assert result.dead_letters == 1
    assert sink.stored_offsets() == {(TOPIC, 0): len(items)}


def test_a_warehouse_that_takes_no_write_fails_the_batch_and_letters_nothing(
    sink: DuckDBSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [ingested(Device()) for _ in range(4)]
    _failing_for(monkeypatch, None)
    error = RuntimeError("disk gone")
    with pytest.raises(RuntimeError) as raised:
        sink.store_isolating(_messages(items), [PartitionOffset(TOPIC, 0, 4)], error)
    assert raised.value is error
    assert _stored(sink) == set()
    assert _letters(sink) == []
    assert sink.stored_offsets() == {}


async def test_the_consumer_retries_then_isolates_the_message(
    sink: DuckDBSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [ingested(Device()) for _ in range(5)]
    poison = str(items[0].envelope.envelope_id)
    calls = _failing_for(monkeypatch, {poison})
    consumer = KafkaSinkConsumer(
        sink, bootstrap_servers="127.0.0.1:9", topics=[TOPIC], retry_pause=0.0
    )
    result = await consumer._store_retrying(_messages(items), [PartitionOffset(TOPIC, 0, 5)])

    assert calls[:STORE_ATTEMPTS] == [5] * STORE_ATTEMPTS  # the whole batch, tried again
    assert result.inserted == 4
    assert result.dead_letters == 1
    assert [str(e) for _, _, e, _ in _letters(sink)] == [poison]
    assert sink.stored_offsets() == {(TOPIC, 0): 5}


async def test_a_batch_that_stores_on_a_retry_is_not_split(
    sink: DuckDBSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [ingested(Device()) for _ in range(3)]
    real = sink_module.write_envelopes
    failures = iter([RuntimeError("a hiccup")])

    def flaky(conn: Any, batch: Sequence[Any], **kwargs: Any) -> Any:
        if batch and (exc := next(failures, None)) is not None:
            raise exc
        return real(conn, batch, **kwargs)

    monkeypatch.setattr(sink_module, "write_envelopes", flaky)
    consumer = KafkaSinkConsumer(
        sink, bootstrap_servers="127.0.0.1:9", topics=[TOPIC], retry_pause=0.0
    )
    result = await consumer._store_retrying(_messages(items), [PartitionOffset(TOPIC, 0, 3)])
    assert result.inserted == 3
    assert _letters(sink) == []
