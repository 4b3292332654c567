"""End to end on real parts: client -> HTTP ingest -> Kafka -> sink consumer -> DuckDB file.

A simulated fleet runs through the production code (real `Telemetry` devices, the
uvicorn-served ingest, aiokafka producer with acks=all, the sink's consumer group, a
DuckDB file). The analyst's intervals must cover the simulator's truth at their stated
rate, and replaying the Kafka messages must change nothing.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import duckdb
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from analytics import fleet_totals, open_warehouse
from fleetsim._demo import coverage
from fleetsim._pipeline import REGION, FleetRun, run_fleet
from fleetsim._simulation import FleetSpec
from ingest import DuckDBSink, KafkaSinkConsumer
from policies import aggregation_tasks, load_policy
from schemas import IngestedEnvelope
from tests.harness.kafka import KafkaBroker
from tests.integration.kafka_kit import read_topic

TOPIC = f"quietwire.envelopes.{REGION}"


@pytest.fixture(scope="module")
def fleet_run(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> FleetRun:
    kafka_broker.create_topics([TOPIC], partitions=3)
    db = tmp_path_factory.mktemp("pipeline") / "warehouse.duckdb"
    # Above the default policy's minimum batch of 100 devices: every batch is revealed.
    return run_fleet(
        FleetSpec(devices=DEVICES, windows=2, seed=11), db, kafka=kafka_broker.bootstrap
    )


DEVICES = 120
TASKS = len(aggregation_tasks(load_policy()))


def _counts(db: Path) -> tuple[int, ...]:
    conn = duckdb.connect(str(db), read_only=True)
    try:
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            for table in ("envelopes", "released_values", "prio_reports", "fleet_aggregates")
        ]
    finally:
        conn.close()
    return tuple(int(c[0]) for c in counts if c is not None)


def test_every_sent_envelope_is_stored_once(fleet_run: FleetRun) -> None:
    assert fleet_run.envelopes_sent == DEVICES * 2
    assert fleet_run.envelopes_stored == fleet_run.envelopes_sent
    assert not fleet_run.dropped
    stats = fleet_run.aggregation
    assert stats is not None
    assert stats.reports_aggregated == DEVICES * 2 * TASKS  # one report per task a day
    assert not stats.reports_rejected
    assert stats.batches_collected == 2 * TASKS


def test_intervals_cover_the_truth_at_their_stated_rate(fleet_run: FleetRun) -> None:
    conn = open_warehouse(fleet_run.db)
    try:
        totals = fleet_totals(conn, level=0.95)
    finally:
        conn.close()
    inside, compared = coverage(fleet_run, totals)
    # Every revealed cell (counters, histogram buckets, counts, sums) of every day.
    assert compared == len(fleet_run.truth)
    assert compared > 500
    rate = inside / compared
    # Cells are independent sums of independent noise: coverage is Binomial(n, 0.95).
    # 4.5 standard deviations: a correct pipeline fails this with probability < 1e-5.
    tolerance = 4.5 * math.sqrt(0.95 * 0.05 / compared)
    assert abs(rate - 0.95) < tolerance, f"coverage {rate:.3f} over {compared} cells"


async def _drain(db: Path, bootstrap: str, group: str) -> None:
    sink = DuckDBSink(db, group=group)
    try:
        async with KafkaSinkConsumer(sink, bootstrap_servers=bootstrap, topics=[TOPIC]) as cons:
            await asyncio.wait_for(cons.run_until(caught_up=True), timeout=120)
    finally:
        sink.close()


def test_replaying_the_topic_changes_nothing(
    fleet_run: FleetRun, kafka_broker: KafkaBroker
) -> None:
    before = _counts(fleet_run.db)
    # The same group resumes from the offsets stored with the rows: nothing to do.
    asyncio.run(_drain(fleet_run.db, kafka_broker.bootstrap, "quietwire-sink"))
    assert _counts(fleet_run.db) == before
    # A new group has no stored offsets and replays the whole topic from the start:
    # every envelope is already there, so nothing is added.
    asyncio.run(_drain(fleet_run.db, kafka_broker.bootstrap, "replay-group"))
    assert _counts(fleet_run.db) == before


def test_a_re_produced_message_adds_nothing(fleet_run: FleetRun, kafka_broker: KafkaBroker) -> None:
    """A client retry after a lost 202 produces the same envelope twice."""
    before = _counts(fleet_run.db)

    async def reproduce() -> None:
        reader = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=kafka_broker.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await reader.start()
        try:
            batch = await reader.getmany(timeout_ms=5000, max_records=5)
            messages = [m for ms in batch.values() for m in ms]
        finally:
            await reader.stop()
        assert messages
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_broker.bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            for m in messages:
                await producer.send_and_wait(TOPIC, m.value, key=m.key)
        finally:
            await producer.stop()

    asyncio.run(reproduce())
    asyncio.run(_drain(fleet_run.db, kafka_broker.bootstrap, "quietwire-sink"))
    assert _counts(fleet_run.db) == before


def _zero_byte_share(data: bytes) -> float:
    return data.count(0) / len(data)


def test_no_plaintext_measurement_in_kafka_or_the_warehouse(
    fleet_run: FleetRun, kafka_broker: KafkaBroker
) -> None:
    """What the leader holds of an aggregate signal is a secret share: uniformly random
    field elements, never the measurement. An unshared Prio3 encoding of these small
    counts (bits of each entry, as 16-byte field elements) would be mostly zero bytes; a
    share has about 1 in 256. The helper's share is a sealed box the leader cannot open."""

    async def values() -> list[bytes]:
        records = await read_topic(kafka_broker.bootstrap, TOPIC)
        return [r.value for r in records if r.value is not None]

    messages = [IngestedEnvelope.model_validate_json(v) for v in asyncio.run(values())]
    assert len(messages) >= DEVICES * 2
    aggregate_signals = {"inference.requests", "inference.errors", "app.exceptions"}
    for item in messages:
        env = item.envelope
        # No aggregate-model signal travels as a released value.
        assert not {a.signal for a in env.aggregates} & aggregate_signals
        assert len(env.reports) == TASKS
        for report in env.reports:
            assert _zero_byte_share(report.leader_share) < 0.05, report.task
    conn = duckdb.connect(str(fleet_run.db), read_only=True)
    try:
        rows = conn.execute("SELECT task, leader_share, helper_share FROM prio_reports").fetchall()
    finally:
        conn.close()
    assert len(rows) == DEVICES * 2 * TASKS
    for task, leader, helper in rows:
        assert _zero_byte_share(bytes(leader)) < 0.05, task
        assert _zero_byte_share(bytes(helper)) < 0.05, task  # sealed: random too
