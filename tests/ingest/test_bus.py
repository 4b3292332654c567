"""The bus seam's real implementations, where they can be exercised without a broker."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from nacl.public import PrivateKey

from ingest import (
    BusUnavailable,
    DuckDBSink,
    IngestSettings,
    InProcessEnvelopeBus,
    KafkaEnvelopeBus,
    create_app,
)
from schemas import IngestedEnvelope
from tests.ingest.kit import FIRST_WINDOW, Device, asgi_client


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_kafka_bus_that_cannot_connect_says_so() -> None:
    bus = KafkaEnvelopeBus(f"127.0.0.1:{_closed_port()}", topic_prefix="quietwire.envelopes")
    with pytest.raises(BusUnavailable, match="cannot connect to Kafka"):
        await bus.start()


async def test_warehouse_failure_in_embedded_mode_is_503(
    settings: IngestSettings, tmp_path: Path, ingest_key: PrivateKey, device: Device
) -> None:
    sink = DuckDBSink(tmp_path / "wh.duckdb")
    bus = InProcessEnvelopeBus(sink)
    async with asgi_client(create_app(settings, bus=bus)) as client:
        sink.close()  # the warehouse goes away under a running ingest
        resp: httpx.Response = await client.post(
            "/v1/envelopes", json={"envelopes": [device.item(ingest_key.public_key)]}
        )
    assert resp.status_code == 503
    assert resp.json()["error"] == "bus_unavailable"


class _CountingSink(DuckDBSink):
    """A real DuckDB sink that counts its write transactions."""

    writes = 0

    def write(self, items, offsets=()):  # type: ignore[no-untyped-def]
        self.writes += 1
        return super().write(items, offsets)


def _ingested(device: Device) -> IngestedEnvelope:
    return IngestedEnvelope.model_validate(
        {
            "envelope": device.envelope(),
            "received_at": (FIRST_WINDOW + timedelta(hours=11, seconds=10)).isoformat(),
            "key_fingerprint": "a" * 64,
            "assurance": "software",
        }
    )


async def test_embedded_bus_commits_concurrent_batches_together(tmp_path: Path) -> None:
    sink = _CountingSink(tmp_path / "wh.duckdb")
    bus = InProcessEnvelopeBus(sink)
    items = [_ingested(Device("eu-test")) for _ in range(20)]
    await asyncio.gather(*(bus.publish([item]) for item in items))
    assert sink.envelope_count() == 20
    # The first publish starts a write; the others arrive while it runs and share one.
    assert sink.writes < 20
    await bus.stop()


async def test_embedded_bus_failure_fails_every_waiting_batch(tmp_path: Path) -> None:
    sink = DuckDBSink(tmp_path / "wh.duckdb")
    bus = InProcessEnvelopeBus(sink, close_sink=False)
    item = _ingested(Device("eu-test"))
    sink.close()  # the warehouse goes away
    results = await asyncio.gather(*(bus.publish([item]) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, BusUnavailable) for r in results)


@pytest.mark.parametrize(
    ("max_batch_bytes", "sizes", "expected"),
    [
        # The default: a wave's 140 envelopes for one partition leave as one batch.
        (None, [1400] * 140, [140]),
        # At the smallest setting they fill batches of 16 KiB, in order, and one too
        # large for any batch goes alone between them.
        (16 * 1024, [1400] * 20 + [40_000] + [1400] * 5, [11, 9, 1, 5]),
    ],
)
async def test_kafka_bus_sends_a_partitions_envelopes_in_as_few_batches_as_fit(
    max_batch_bytes: int | None, sizes: list[int], expected: list[int]
) -> None:
    """aiokafka's default batch (16 KiB, about ten envelopes) made a wave one produce
    request per ten envelopes; the bus's own limit keeps a partition's wave in one
    (real aiokafka batch builders; what the producer is handed is recorded, not sent)."""
    kwargs = {} if max_batch_bytes is None else {"max_batch_bytes": max_batch_bytes}
    bus = KafkaEnvelopeBus("127.0.0.1:9", topic_prefix="quietwire.envelopes", **kwargs)
    producer = bus._producer
    handed: list[list[bytes]] = []

    async def send_batch(batch, topic, *, partition):  # type: ignore[no-untyped-def]
        assert (topic, partition) == ("quietwire.envelopes.eu", 2)
        handed.append([r.value for r in _records(batch)])
        return asyncio.get_running_loop().create_future()

    async def send(topic, value, key, partition):  # type: ignore[no-untyped-def]
        handed.append([value])
        return asyncio.get_running_loop().create_future()

    producer.send_batch = send_batch  # type: ignore[method-assign]
    producer.send = send  # type: ignore[method-assign]
    messages = [(b"dev-%d" % i, bytes([i % 251]) * size) for i, size in enumerate(sizes)]
    try:
        sends = await bus._send_batches("quietwire.envelopes.eu", 2, messages)
    finally:
        await producer.stop()
    assert [len(values) for values in handed] == expected
    assert [n for _, n in sends] == expected
    assert [v for values in handed for v in values] == [value for _, value in messages]


def _records(batch):  # type: ignore[no-untyped-def]
    """The records of a closed aiokafka `BatchBuilder`, read back from its buffer."""
    from aiokafka.record.default_records import DefaultRecordBatch

    buffer = batch._builder.build()
    return list(DefaultRecordBatch(bytearray(buffer)))


def test_topic_message_limits_read_from_describe_configs_answers() -> None:
    from types import SimpleNamespace

    from ingest._bus import topic_message_limits

    v0 = SimpleNamespace(
        resources=[
            (
                0,
                None,
                2,
                "a",
                [
                    ("cleanup.policy", "delete", False, True, False),
                    ("max.message.bytes", "65536", False, False, False),
                ],
            ),
            (3, "unknown topic", 2, "missing", []),  # an error: left out
            (0, None, 2, "odd", [("max.message.bytes", "lots", False, False, False)]),
        ]
    )
    v1 = SimpleNamespace(  # v1+ entries: (name, value, read_only, source, sensitive, synonyms)
        resources=[(0, None, 2, "b", [("max.message.bytes", "1048588", False, 5, False, [])])]
    )
    assert topic_message_limits([v0, v1]) == {"a": 65536, "b": 1048588}
