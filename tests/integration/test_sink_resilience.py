"""The pipeline keeps going on a real broker: a sink started before Kafka waits and then
consumes, the ingest's /healthz names Kafka while the broker is down and recovers with
it, posts fail fast meanwhile, and a sink that cannot go on exits with the reason."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from nacl.public import PublicKey

from ingest import DuckDBSink, IngestSettings, KafkaEnvelopeBus, KafkaSinkConsumer, create_app
from ingest._backoff import Backoff
from ingest._health_server import HealthServer
from ingest._sink_service import SinkHealth, SinkService
from tests.harness.kafka import KafkaBroker
from tests.harness.net import free_port
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client


def _settings(tmp_path: Path, bootstrap: str) -> IngestSettings:
    return IngestSettings(
        policy_paths=SERVED_POLICIES,
        region=f"it-{uuid.uuid4().hex[:8]}",
        state_dir=tmp_path / "state",
        kafka_bootstrap=bootstrap,
    )


async def _until(condition: Callable[[], object], what: str, *, polls: int = 600) -> None:
    """Poll `condition` (sync or async) every 0.1 s: never a guessed sleep, and up to a
    minute on a loaded machine."""
    for _ in range(polls):
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def _post(client: httpx.AsyncClient, region: str, n: int) -> tuple[httpx.Response, set[str]]:
    key = PublicKey(base64.b64decode((await client.get("/v1/ingest-key")).json()["public_key"]))
    device = Device(region)
    envs = [device.envelope() for _ in range(n)]
    resp = await client.post(
        "/v1/envelopes", json={"envelopes": [device.item(key, e) for e in envs]}
    )
    return resp, {e["envelope_id"] for e in envs}


def _stored_ids(sink: DuckDBSink) -> set[str]:
    # A cursor of its own: the sink writes on its own thread with its connection, and a
    # DuckDB connection refuses a second caller while one call runs.
    cursor = sink.connection.cursor()
    try:
        rows = cursor.execute("SELECT CAST(envelope_id AS VARCHAR) FROM envelopes").fetchall()
    finally:
        cursor.close()
    return {r[0] for r in rows}


async def test_a_sink_started_before_the_broker_waits_then_consumes(tmp_path: Path) -> None:
    port = free_port()
    settings = _settings(tmp_path, f"127.0.0.1:{port}")
    sink = DuckDBSink(tmp_path / "warehouse.duckdb", group="sink-early")
    consumer = KafkaSinkConsumer(
        sink,
        bootstrap_servers=settings.kafka_bootstrap or "",
        topics=[settings.topic],
        metadata_max_age_ms=500,
    )
    service = SinkService(sink, consumer, backoff=Backoff(initial=0.2, maximum=1.0))
    loop = asyncio.get_running_loop()
    health = HealthServer(service.health, loop, port=0)
    url = f"http://127.0.0.1:{health.port}/healthz"
    stopping = asyncio.Event()
    run = asyncio.create_task(service.run(stopping))
    broker = KafkaBroker(port=port)
    try:
        await _until(lambda: service.state == "waiting_for_kafka", "waiting for Kafka")
        before = await asyncio.to_thread(httpx.get, url)
        assert before.status_code == 503
        assert SinkHealth.model_validate_json(before.content).failing == ["kafka"]

        await asyncio.to_thread(broker.start)
        await broker.create_topics_async([settings.topic], partitions=2)
        async with asgi_client(create_app(settings)) as client:
            resp, sent = await _post(client, settings.region, 5)
        assert resp.status_code == 202, resp.text
        await _until(lambda: _stored_ids(sink) == sent, "the envelopes stored")

        async def healthy_and_caught_up() -> bool:
            answer = await asyncio.to_thread(httpx.get, url)
            report = SinkHealth.model_validate_json(answer.content)
            return answer.status_code == 200 and report.lag == 0

        await _until(healthy_and_caught_up, "the sink healthy with no lag")
        assert not run.done()
        stopping.set()
        assert await run == 0
    finally:
        stopping.set()
        await asyncio.wait([run])
        health.close()
        sink.close()
        await asyncio.to_thread(broker.stop)


async def test_ingest_healthz_names_kafka_while_the_broker_is_down_then_recovers(
    tmp_path: Path,
) -> None:
    port = free_port()
    broker = KafkaBroker(port=port)
    await asyncio.to_thread(broker.start)
    try:
        settings = _settings(tmp_path, broker.bootstrap)
        await broker.create_topics_async([settings.topic], partitions=1)
        bus = KafkaEnvelopeBus(
            broker.bootstrap,
            topic_prefix=settings.topic_prefix,
            request_timeout_ms=2000,
            ack_timeout=2.0,
            health_ttl=0.2,
        )
        async with asgi_client(create_app(settings, bus=bus)) as client:
            up = await client.get("/healthz")
            assert up.status_code == 200, up.text
            assert up.json()["dependencies"]["kafka"]["ok"]
            assert (await _post(client, settings.region, 2))[0].status_code == 202

            await asyncio.to_thread(broker.stop)

            async def kafka_down() -> bool:
                return (await client.get("/healthz")).status_code == 503

            await _until(kafka_down, "/healthz 503")
            down = (await client.get("/healthz")).json()
            assert (down["status"], down["failing"]) == ("unavailable", ["kafka"])
            assert down["dependencies"]["registry"]["ok"]
            assert down["dependencies"]["audit_log"]["ok"]
            # Known down: refused at once, not after waiting for acks that cannot come.
            refused, _ = await _post(client, settings.region, 1)
            assert refused.status_code == 503
            assert refused.json()["detail"].startswith("Kafka is unreachable")

            broker = KafkaBroker(port=port)  # back on the same address
            await asyncio.to_thread(broker.start)

            async def kafka_up() -> bool:
                return (await client.get("/healthz")).status_code == 200

            await _until(kafka_up, "/healthz 200 again")
            assert (await client.get("/healthz")).json()["failing"] == []
    finally:
        await asyncio.to_thread(broker.stop)


async def test_a_sink_that_cannot_go_on_exits_with_the_reason(
    kafka_broker: KafkaBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"quietwire.envelopes.it-{uuid.uuid4().hex[:8]}"
    await kafka_broker.create_topics_async([topic], partitions=1)
    sink = DuckDBSink(tmp_path / "warehouse.duckdb", group="sink-doomed")
    consumer = KafkaSinkConsumer(sink, bootstrap_servers=kafka_broker.bootstrap, topics=[topic])
    service = SinkService(sink, consumer)
    stopping = asyncio.Event()
    with caplog.at_level(logging.CRITICAL, logger="quietwire.ingest.sink"):
        run = asyncio.create_task(service.run(stopping))
        await _until(lambda: service.state == "consuming", "consuming")
        sink.connection.close()  # the warehouse fails under the running sink
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b'{"not": "an envelope"}', key=b"k")
        finally:
            await producer.stop()
        status = await asyncio.wait_for(run, timeout=120)
    assert status == 1  # the process exits non-zero: no dead task in a live process
    assert service.state == "failed"
    assert "sink exiting: the consume loop failed: ConnectionException" in caplog.text
    report = await service.health()
    assert report.status == "unavailable"
    assert "sink" in report.failing
