"""The sink process without a broker: it waits (and says so), stops when asked, serves
its health over HTTP, and refuses a warehouse it cannot open."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ingest import DuckDBSink, KafkaSinkConsumer
from ingest._backoff import Backoff
from ingest._cli import main
from ingest._health_server import HealthServer
from ingest._sink_service import SinkHealth, SinkService


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    s = DuckDBSink(tmp_path / "wh.duckdb", group="g1")
    yield s
    s.close()


def _service(sink: DuckDBSink) -> SinkService:
    consumer = KafkaSinkConsumer(
        sink, bootstrap_servers=f"127.0.0.1:{_closed_port()}", topics=["quietwire.envelopes.x"]
    )
    return SinkService(sink, consumer, backoff=Backoff(initial=0.05, maximum=0.2))


async def _until(condition: object, what: str) -> None:
    assert callable(condition)
    for _ in range(400):  # polled, never a guessed sleep: up to 20 s on a loaded machine
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_a_sink_started_before_kafka_waits_and_reports_it(
    sink: DuckDBSink, caplog: pytest.LogCaptureFixture
) -> None:
    service = _service(sink)
    stopping = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="quietwire.ingest.sink"):
        run = asyncio.create_task(service.run(stopping))
        await _until(lambda: caplog.text.count("waiting for Kafka") >= 3, "three attempts")
        health = await service.health()
        assert not run.done()  # waiting, not exited
        stopping.set()
        assert await run == 0  # asked to stop while waiting: a clean exit
    assert (health.status, health.state) == ("unavailable", "waiting_for_kafka")
    assert health.failing == ["kafka"]
    assert "not connected" in health.dependencies["kafka"].detail
    assert health.dependencies["warehouse"].ok
    assert health.lag is None
    assert service.state == "stopped"


async def test_the_health_endpoint_answers_over_http(sink: DuckDBSink) -> None:
    service = _service(sink)
    server = HealthServer(service.health, asyncio.get_running_loop(), port=0)
    try:
        base = f"http://127.0.0.1:{server.port}"
        down = await asyncio.to_thread(httpx.get, f"{base}/healthz")
        missing = await asyncio.to_thread(httpx.get, f"{base}/metrics")
    finally:
        server.close()
    assert down.status_code == 503
    report = SinkHealth.model_validate_json(down.content)
    assert (report.status, report.group, report.failing) == ("unavailable", "g1", ["kafka"])
    assert missing.status_code == 404


def test_a_warehouse_that_cannot_be_opened_stops_the_sink_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-a-file").mkdir()
    monkeypatch.setenv("QUIETWIRE_INGEST_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("QUIETWIRE_INGEST_KAFKA_BOOTSTRAP", f"127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("QUIETWIRE_INGEST_WAREHOUSE_PATH", str(tmp_path / "not-a-file"))
    assert main(["sink"]) == 2
    assert "cannot open the warehouse" in capsys.readouterr().err
