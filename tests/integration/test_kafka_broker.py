"""The test broker behaves like the Kafka the ingest and sink will talk to."""

from __future__ import annotations

import socket
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from tests.harness.kafka import KafkaBroker, KafkaHarnessError, KafkaStartError

KEYS = [f"device-{n}".encode() for n in range(6)]
PER_KEY = 30


def _topic(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


async def _consume(
    bootstrap: str, topic: str, group: str, expected: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `expected` records as a member of `group`, committing what it read."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        # A bound on polls so a lost message fails the test instead of hanging it.
        for _ in range(60):
            batches = await consumer.getmany(timeout_ms=1000)
            for batch in batches.values():
                records.extend(batch)
            if len(records) >= expected:
                break
        await consumer.commit()
    finally:
        await consumer.stop()
    return records


async def test_broker_answers_admin_calls_as_soon_as_it_is_returned(
    kafka_broker: KafkaBroker,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    port = int(kafka_broker.bootstrap.rsplit(":", 1)[1])
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", port)]


async def test_created_topic_has_the_partitions_asked_for(kafka_broker: KafkaBroker) -> None:
    topic = _topic("partitions")
    await kafka_broker.create_topics_async([topic], partitions=4)
    # Creating it again is harmless: fixtures and `make kafka` may both create a topic.
    await kafka_broker.create_topics_async([topic], partitions=4)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert described["error_code"] == 0
    assert len(described["partitions"]) == 4


async def test_topics_are_not_created_on_first_use(kafka_broker: KafkaBroker) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics(["never.created"])
        topics = await admin.list_topics()
    finally:
        await admin.close()
    assert described["error_code"] != 0
    assert "never.created" not in topics


async def test_an_invalid_topic_name_is_refused_with_the_brokers_reason(
    kafka_broker: KafkaBroker,
) -> None:
    with pytest.raises(KafkaHarnessError, match="bad topic!"):
        await kafka_broker.create_topics_async(["bad topic!"], partitions=1)


async def test_keyed_messages_come_back_in_order_per_key(kafka_broker: KafkaBroker) -> None:
    topic = _topic("ordering")
    await kafka_broker.create_topics_async([topic], partitions=3)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        # Interleave keys and let sends batch up, as an ingest under load would.
        futures = [
            await producer.send(topic, key=key, value=f"{seq}".encode())
            for seq in range(PER_KEY)
            for key in KEYS
        ]
        await producer.flush()
        for future in futures:
            await future
    finally:
        await producer.stop()

    records = await _consume(kafka_broker.bootstrap, topic, "sink", len(KEYS) * PER_KEY)

    values_by_key: dict[bytes, list[int]] = defaultdict(list)
    partitions_by_key: dict[bytes, set[int]] = defaultdict(set)
    for record in records:
        assert record.key is not None
        assert record.value is not None
        values_by_key[record.key].append(int(record.value))
        partitions_by_key[record.key].add(record.partition)
    assert values_by_key == {key: list(range(PER_KEY)) for key in KEYS}
    assert all(len(parts) == 1 for parts in partitions_by_key.values())
    # Six keys over three partitions: more than one partition carries traffic.
    assert len(set().union(*partitions_by_key.values())) > 1


async def test_a_consumer_group_resumes_after_its_committed_offsets(
    kafka_broker: KafkaBroker,
) -> None:
    topic = _topic("resume")
    await kafka_broker.create_topics_async([topic], partitions=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_broker.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, key=b"d", value=b"first")
        first = await _consume(kafka_broker.bootstrap, topic, "sink", 1)
        await producer.send_and_wait(topic, key=b"d", value=b"second")
        second = await _consume(kafka_broker.bootstrap, topic, "sink", 1)
    finally:
        await producer.stop()
    assert [r.value for r in first] == [b"first"]
    assert [r.value for r in second] == [b"second"]


def test_a_broker_that_cannot_start_says_why() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        broker = KafkaBroker(port=taken, startup_timeout=60)
        with pytest.raises(KafkaStartError, match="Address already in use"):
            broker.start()
    with pytest.raises(KafkaHarnessError, match="not running"):
        _ = broker.bootstrap
