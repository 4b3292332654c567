"""Ingest → Kafka → sink → DuckDB on a real broker, and replays that add nothing.

Delivery from Kafka is at least once (a rebalance can hand a batch over again), so these
tests count what the warehouse holds (distinct envelope ids, letters by Kafka
coordinates) and run the sink until the warehouse holds what was sent, never until a
number of messages was read; message counts are only ever bounded from below."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from nacl.public import PrivateKey, PublicKey

from ingest import DuckDBSink, IngestSettings, KafkaEnvelopeBus, KafkaSinkConsumer, create_app
from ingest._verify import Accepted, EnvelopeVerifier
from schemas import BatchResult, IngestedEnvelope
from tests.harness.kafka import KafkaBroker
from tests.ingest.kit import FIRST_WINDOW, SERVED_POLICIES, Device, asgi_client


def _settings(tmp_path: Path, broker: KafkaBroker) -> IngestSettings:
    # A fresh region (so a fresh topic) per test: the broker is shared by the session.
    return IngestSettings(
        policy_paths=SERVED_POLICIES,
        region=f"it-{uuid.uuid4().hex[:8]}",
        state_dir=tmp_path / "state",
        kafka_bootstrap=broker.bootstrap,
    )


async def _post_batches(client: httpx.AsyncClient, region: str, batches: int) -> set[str]:
    """Send `batches` batches of 5 envelopes from 5 devices; returns the accepted ids.

    One envelope per device and batch: a device's daily epsilon covers six of the kit's."""
    key = PublicKey(base64.b64decode((await client.get("/v1/ingest-key")).json()["public_key"]))
    devices = [Device(region) for _ in range(5)]
    ids: set[str] = set()
    for _ in range(batches):
        envs = [devices[i].envelope() for i in range(5)]
        resp = await client.post(
            "/v1/envelopes",
            json={"envelopes": [devices[i].item(key, e) for i, e in enumerate(envs)]},
        )
        assert resp.status_code == 202, resp.text
        assert BatchResult.model_validate_json(resp.content).accepted == 5
        ids.update(e["envelope_id"] for e in envs)
    return ids


def _stored_ids(sink: DuckDBSink) -> set[str]:
    rows = sink.connection.execute("SELECT CAST(envelope_id AS VARCHAR) FROM envelopes").fetchall()
    return {r[0] for r in rows}


async def test_posted_envelopes_reach_duckdb_once_even_when_replayed(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, kafka_broker)
    await kafka_broker.create_topics_async([settings.topic], partitions=3)
    async with asgi_client(create_app(settings)) as client:
        assert (await client.get("/healthz")).json()["bus"] == "kafka"
        sent = await _post_batches(client, settings.region, batches=4)
    assert len(sent) == 20

    warehouse = tmp_path / "warehouse.duckdb"
    sink = DuckDBSink(warehouse, group="sink-a")
    # No monitoring commits to Kafka: a restart of this group can only resume from the
    # offsets DuckDB stored with the rows.
    async with KafkaSinkConsumer(
        sink,
        bootstrap_servers=kafka_broker.bootstrap,
        topics=[settings.topic],
        commit_to_kafka=False,
    ) as consumer:
        await asyncio.wait_for(consumer.run_until(lambda _: _stored_ids(sink) >= sent), 120)
        await consumer.run_until(caught_up=True)
    assert _stored_ids(sink) == sent
    assert sink.dead_letter_count() == 0
    values = sink.connection.execute("SELECT count(*) FROM released_values").fetchone()
    assert values == (20,)
    assert sum(o for o in sink.stored_offsets().values()) == 20

    # The same group restarts: it resumes at the stored offsets and reads nothing again.
    async with KafkaSinkConsumer(
        sink,
        bootstrap_servers=kafka_broker.bootstrap,
        topics=[settings.topic],
        commit_to_kafka=False,
    ) as consumer:
        stats = await consumer.run_until(caught_up=True)
    assert stats.inserted == 0
    assert sink.envelope_count() == 20
    sink.close()

    # A brand-new group on the same warehouse replays the topic from the beginning:
    # every message is read again and the row counts do not change.
    replay = DuckDBSink(warehouse, group="sink-replay")
    async with KafkaSinkConsumer(
        replay, bootstrap_servers=kafka_broker.bootstrap, topics=[settings.topic]
    ) as consumer:
        stats = await asyncio.wait_for(consumer.run_until(lambda s: s.messages >= 20), 120)
    assert (stats.inserted, stats.duplicates) == (0, stats.messages)
    assert replay.envelope_count() == 20
    assert replay.connection.execute("SELECT count(*) FROM released_values").fetchone() == (20,)
    replay.close()


async def test_poison_messages_are_dead_lettered_and_do_not_stop_the_sink(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """One message that does not decode, one whose row the warehouse refuses (its file
    carries a constraint the sink does not know, as a foreign value would break one),
    between honest ones: both dead-lettered with their coordinates, the rest stored."""
    settings = _settings(tmp_path, kafka_broker)
    await kafka_broker.create_topics_async([settings.topic], partitions=1)
    warehouse = tmp_path / "warehouse.duckdb"
    conn = duckdb.connect(str(warehouse))
    conn.execute(
        "CREATE TABLE suppressions (envelope_id UUID NOT NULL, device_id VARCHAR NOT NULL, "
        "window_start TIMESTAMPTZ NOT NULL, window_end TIMESTAMPTZ NOT NULL, "
        "signal VARCHAR NOT NULL, releases INTEGER NOT NULL CHECK (releases < 1000))"
    )
    conn.close()
    refused = IngestedEnvelope.model_validate(
        {
            "envelope": Device(settings.region).envelope(suppressed={"x.y": 5000}),
            "received_at": (FIRST_WINDOW + timedelta(hours=11, seconds=10)).isoformat(),
            "key_fingerprint": "a" * 64,
            "assurance": "software",
        }
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic, b'{"not": "an envelope"}', key=b"rogue")
        await producer.send_and_wait(settings.topic, refused.model_dump_json().encode())
    finally:
        await producer.stop()
    async with asgi_client(create_app(settings)) as client:
        sent = await _post_batches(client, settings.region, batches=1)

    sink = DuckDBSink(warehouse, group="sink-a")
    async with KafkaSinkConsumer(
        sink, bootstrap_servers=kafka_broker.bootstrap, topics=[settings.topic]
    ) as consumer:
        await asyncio.wait_for(
            consumer.run_until(lambda _: sink.stored_offsets() == {(settings.topic, 0): 7}), 120
        )
    assert _stored_ids(sink) == sent
    letters = sink.connection.execute(
        "SELECT stage, topic, kafka_offset, message_key, message_value, envelope_id, "
        "error_class FROM dead_letters ORDER BY kafka_offset"
    ).fetchall()
    assert letters == [
        ("decode", settings.topic, 0, b"rogue", b'{"not": "an envelope"}', None, "ValidationError"),
        (
            "store",
            settings.topic,
            1,
            None,
            refused.model_dump_json().encode(),
            str(refused.envelope.envelope_id),
            "ConstraintException",
        ),
    ]
    sink.close()

    # Replayed by another group, the poison messages are recorded once, not twice.
    replay = DuckDBSink(warehouse, group="sink-replay")
    async with KafkaSinkConsumer(
        replay, bootstrap_servers=kafka_broker.bootstrap, topics=[settings.topic]
    ) as consumer:
        stats = await asyncio.wait_for(consumer.run_until(lambda s: s.messages >= 7), 120)
    # Read again, but already recorded by the first group.
    assert (stats.inserted, stats.dead_letters) == (0, 0)
    assert replay.dead_letter_count() == 2
    assert replay.envelope_count() == 5
    replay.close()


async def test_a_broker_that_goes_away_is_a_503_not_a_500(tmp_path: Path) -> None:
    # Its own broker: this test stops it.
    with KafkaBroker() as broker:
        settings = _settings(tmp_path, broker)
        await broker.create_topics_async([settings.topic], partitions=1)
        bus = KafkaEnvelopeBus(
            broker.bootstrap,
            topic_prefix=settings.topic_prefix,
            request_timeout_ms=2000,
            ack_timeout=2.0,
        )
        async with asgi_client(create_app(settings, bus=bus)) as client:
            await _post_batches(client, settings.region, batches=1)
            broker.stop()
            device = Device(settings.region)
            key_b64 = (await client.get("/v1/ingest-key")).json()["public_key"]
            item = device.item(PublicKey(base64.b64decode(key_b64)))
            resp = await client.post("/v1/envelopes", json={"envelopes": [item]})
    assert resp.status_code == 503
    assert resp.json()["error"] == "bus_unavailable"


@pytest.mark.parametrize("max_batch_bytes", [16 * 1024, None])
async def test_published_batches_keep_each_device_on_its_partition_in_order(
    kafka_broker: KafkaBroker, tmp_path: Path, max_batch_bytes: int | None
) -> None:
    """The bus hands Kafka whole record batches per partition; each device's messages
    still land on the partition Kafka's default partitioner gives its id (murmur2, as a
    Java producer's), in publish order, and big ones (past a 16 KiB batch, the smallest
    the bus may be set to) go too. With the default limit a partition's share is one
    batch; with 16 KiB it is several, and each big message goes alone."""
    from aiokafka.partitioner import DefaultPartitioner

    from tests.integration.kafka_kit import read_topic

    region = f"it-{uuid.uuid4().hex[:8]}"
    topic = f"quietwire.envelopes.{region}"
    await kafka_broker.create_topics_async([topic], partitions=3)
    devices = [Device(region) for _ in range(7)]
    sent: list[tuple[Device, dict[str, Any]]] = []
    for round_ in range(4):
        for device in devices:
            envelope = device.envelope()
            if round_ == 2:  # one large message per device: over a batch on its own
                envelope["app"]["version"] = "9" * 60
                envelope["aggregates"] = envelope["aggregates"] * 60
            sent.append((device, envelope))
    accepted = _verified(region, sent)
    assert max(len(a.encoded) for a in accepted) > 16 * 1024
    limit = {} if max_batch_bytes is None else {"max_batch_bytes": max_batch_bytes}
    bus = KafkaEnvelopeBus(kafka_broker.bootstrap, topic_prefix="quietwire.envelopes", **limit)
    await bus.start()
    try:
        await bus.publish([a.item for a in accepted], [a.encoded for a in accepted])
    finally:
        await bus.stop()
    records = await read_topic(kafka_broker.bootstrap, topic)
    assert len(records) >= len(accepted)  # at least once
    partitions = sorted({r.partition for r in records})
    expected = {
        d.device_id: DefaultPartitioner()(d.device_id.encode(), [0, 1, 2], []) for d in devices
    }
    by_device: dict[str, list[str]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        item = IngestedEnvelope.model_validate_json(record.value)
        device_id = item.envelope.device_id
        assert record.key == device_id.encode()
        assert record.partition == expected[device_id], (device_id, partitions)
        by_device.setdefault(device_id, []).append(str(item.envelope.envelope_id))
    for device in devices:
        sent = [
            str(a.envelope_id) for a in accepted if a.item.envelope.device_id == device.device_id
        ]
        assert list(dict.fromkeys(by_device[device.device_id])) == sent


async def test_batches_are_held_below_a_topic_max_message_bytes_lower_than_the_setting(
    kafka_broker: KafkaBroker,
) -> None:
    """A topic set to refuse record batches over 64 KiB, under a bus set to 512 KiB: read
    at start, the topic's limit holds every batch below it, so a wave of envelopes larger
    than it is acknowledged whole. Without the check, Kafka refuses the full batch."""
    from ingest import BusUnavailable
    from tests.integration.kafka_kit import read_topic

    region = f"it-{uuid.uuid4().hex[:8]}"
    topic = f"quietwire.envelopes.{region}"
    await kafka_broker.create_topics_async(
        [topic], partitions=1, configs={"max.message.bytes": str(64 * 1024)}
    )
    devices = [Device(region) for _ in range(200)]
    accepted = _verified(region, [(d, d.envelope()) for d in devices])
    assert sum(len(a.encoded) for a in accepted) > 2 * 64 * 1024

    unchecked = KafkaEnvelopeBus(kafka_broker.bootstrap, topic_prefix="quietwire.envelopes")
    await unchecked.start()
    try:
        with pytest.raises(BusUnavailable, match=r"MessageSizeTooLarge|too large"):
            await unchecked.publish([a.item for a in accepted], [a.encoded for a in accepted])
    finally:
        await unchecked.stop()

    bus = KafkaEnvelopeBus(
        kafka_broker.bootstrap, topic_prefix="quietwire.envelopes", topics=[topic]
    )
    await bus.start()
    try:
        assert bus.batch_limit == 64 * 1024 - 1024
        await bus.publish([a.item for a in accepted], [a.encoded for a in accepted])
    finally:
        await bus.stop()
    records = await read_topic(kafka_broker.bootstrap, topic)
    stored = {IngestedEnvelope.model_validate_json(r.value).envelope.envelope_id for r in records}
    assert stored == {a.envelope_id for a in accepted}


async def test_an_ingest_on_a_topic_it_cannot_describe_keeps_its_batch_limit(
    kafka_broker: KafkaBroker,
) -> None:
    bus = KafkaEnvelopeBus(
        kafka_broker.bootstrap,
        topic_prefix="quietwire.envelopes",
        topics=[f"quietwire.envelopes.never-created-{uuid.uuid4().hex[:8]}"],
    )
    await bus.start()
    try:
        assert bus.batch_limit == 512 * 1024
    finally:
        await bus.stop()


def _verified(region: str, sent: list[tuple[Device, dict[str, Any]]]) -> list[Accepted]:
    """(device, envelope) pairs sealed and signed, through the ingest's own verifier
    (under the envelopes' policy, any window time): what the bus is handed."""
    key = PrivateKey.generate()
    verifier = EnvelopeVerifier(
        key,
        region=region,
        known_policy_hashes=[sent[0][1]["policy_hash"]],
        max_clock_skew=timedelta(days=36_500),
    )
    accepted: list[Accepted] = []
    for device, envelope in sent:
        verdict = verifier.verify(
            device.item(key.public_key, envelope), received_at=datetime.now(UTC)
        )
        assert isinstance(verdict, Accepted), verdict
        accepted.append(verdict)
    return accepted
