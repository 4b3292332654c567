"""The bus seam's real implementations, where they can be exercised without a broker."""

from __future__ import annotations

import socket
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
from tests.ingest.kit import Device, asgi_client


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
