"""Secure aggregation on real parts: devices' Prio3 reports through the HTTP ingest, Kafka
(with at-least-once redelivery), the sink's consumer group, a DuckDB file, and the leader
with a helper served over HTTP on loopback, real OpenDP noise on both sides.

The revealed sums must be the devices' truth plus two discrete Laplace draws: each entry
within 8 standard deviations (a correct pipeline misses that with probability < 1e-13);
the report count is exact, because the warehouse refuses duplicates by envelope and by
report id, however often Kafka delivers them.
"""

from __future__ import annotations

import base64
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from nacl.public import PrivateKey, PublicKey

from ingest import (
    AuditLog,
    DuckDBSink,
    IngestSettings,
    KafkaSinkConsumer,
    create_app,
    write_private_key,
)
from ingest.aggregation import (
    AggregationService,
    HelperClient,
    HelperSettings,
    TaskCatalog,
    serve_helper,
)
from policies import dump_policy
from schemas import BatchResult
from tests.harness.kafka import KafkaBroker
from tests.ingest.aggregation.kit import VERIFY_KEY, WINDOW, Fleet, small_policy
from tests.ingest.kit import FIRST_WINDOW, Device, asgi_client
from tests.integration.kafka_kit import read_topic

CELLS = "inference.requests/cells"
DEVICES = 12
BATCH = FIRST_WINDOW + timedelta(hours=10)
"""The policy window (one hour: `small_policy`) every envelope here covers."""


def _in_batch() -> dict[str, str]:
    """Envelope fields for a window that is exactly the batch (the policy's window)."""
    end = BATCH + timedelta(seconds=WINDOW)
    return {
        "window_start": BATCH.isoformat(),
        "window_end": end.isoformat(),
        "sent_at": (end + timedelta(seconds=5)).isoformat(),
    }


TOKEN = "kafka-test-leader-token"


def _discrete_laplace_sd(scale: float) -> float:
    a = math.exp(-1.0 / scale)
    return math.sqrt(2 * a) / (1 - a)


async def _redeliver(bootstrap: str, topic: str) -> int:
    """Produce every message of the topic once more (a producer retry, a replay)."""
    messages = await read_topic(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for m in messages:
            await producer.send_and_wait(topic, m.value, key=m.key)
    finally:
        await producer.stop()
    return len(messages)


async def test_reports_through_kafka_are_revealed_once_with_their_noise(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    helper_key = PrivateKey.generate()
    policy = small_policy(helper_key)
    settings = IngestSettings(
        region=f"agg-{uuid.uuid4().hex[:8]}",
        state_dir=tmp_path / "ingest",
        kafka_bootstrap=kafka_broker.bootstrap,
        policy_paths=(dump_policy(policy, tmp_path / "policy.yaml"),),
    )
    await kafka_broker.create_topics_async([settings.topic], partitions=3)
    warehouse = tmp_path / "warehouse.duckdb"
    sink = DuckDBSink(warehouse)
    fleet = Fleet(policy, helper_key, sink)
    truth = [0, 0, 0]
    try:
        async with asgi_client(create_app(settings)) as client:
            ingest_key = base64.b64decode((await client.get("/v1/ingest-key")).json()["public_key"])
            first_report = None
            for i in range(DEVICES):
                device = Device(settings.region)
                counts = [i % 4, (i * 7) % 5, 1]
                truth = [t + c for t, c in zip(truth, counts, strict=True)]
                (report,) = fleet.reports({CELLS: counts}, batch=BATCH)
                first_report = first_report or report
                envelope = device.envelope(
                    policy_hash=policy.content_hash,
                    aggregates=[],
                    **_in_batch(),
                    reports=[report.model_dump(mode="json")],
                )
                item = device.item(PublicKey(ingest_key), envelope)
                for _ in range(2):  # a client retry after a lost 202
                    resp = await client.post("/v1/envelopes", json={"envelopes": [item]})
                    assert resp.status_code == 202, resp.text
                    assert BatchResult.model_validate_json(resp.content).accepted == 1
            # A captured report replayed by another device in an envelope of its own.
            thief = Device(settings.region)
            replay = thief.envelope(
                policy_hash=policy.content_hash,
                aggregates=[],
                **_in_batch(),
                reports=[first_report.model_dump(mode="json")] if first_report else [],
            )
            resp = await client.post(
                "/v1/envelopes", json={"envelopes": [thief.item(PublicKey(ingest_key), replay)]}
            )
            assert resp.status_code == 202, resp.text
        assert await _redeliver(kafka_broker.bootstrap, settings.topic) >= DEVICES + 1
        async with KafkaSinkConsumer(
            sink, bootstrap_servers=kafka_broker.bootstrap, topics=[settings.topic]
        ) as consumer:
            await consumer.run_until(caught_up=True)
        refused = sink.connection.execute(
            "SELECT reason, count(*) FROM prio_report_rejections GROUP BY ALL"
        ).fetchall()
        assert refused == [("report_replayed", 1)]

        write_private_key(tmp_path / "helper.key", helper_key)
        helper_settings = HelperSettings(
            private_key_path=tmp_path / "helper.key",
            state_dir=tmp_path / "helper",
            verify_key=VERIFY_KEY.hex(),
            leader_token=TOKEN,
        )
        audit = AuditLog(settings.state_dir / "audit.sqlite3")
        with serve_helper(helper_settings, policies=[policy]) as url, httpx.Client() as http:
            leader = AggregationService(
                sink,
                HelperClient(url, token=TOKEN, client=http),
                TaskCatalog.from_policies([policy]),
                VERIFY_KEY,
                audit=audit,
                max_job_reports=5,
            )
            stats = leader.run_once(datetime.now(UTC))
        assert stats.batches_collected == 1
        assert stats.reports_aggregated == DEVICES
        assert audit.verify_chain().ok
        assert [e.decision for e in audit.entries(action="batch_collection")] == ["accepted"]
        audit.close()
        rows = sink.connection.execute(
            "SELECT value, reports, scale, draws FROM fleet_aggregates WHERE task = ? "
            "ORDER BY vector_index",
            [CELLS],
        ).fetchall()
    finally:
        sink.close()
    assert [r[1] for r in rows] == [DEVICES] * 3
    for (value, _, scale, draws), expected in zip(rows, truth, strict=True):
        assert draws == 2
        sd = math.sqrt(draws) * _discrete_laplace_sd(scale)
        assert abs(value - expected) <= 8 * sd, (value, expected, sd)
