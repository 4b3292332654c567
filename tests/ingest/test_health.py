"""/healthz names what the ingest depends on, and the probes behind it."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from auditlog import AuditLog
from ingest import DuckDBSink, IngestSettings, InMemoryEnvelopeBus, InProcessEnvelopeBus, create_app
from ingest._health import CachedProbe, Check, audit_log_probe, registry_probe
from ingest._registry import SqliteDeviceRegistry
from tests.ingest.kit import asgi_client


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Probe:
    def __init__(self, *answers: Check | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> Check:
        self.calls += 1
        await self.release.wait()
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_a_probe_answer_is_kept_for_its_ttl_then_checked_again() -> None:
    clock = _Clock()
    probe = _Probe(Check(True, "up"), Check(False, "down"))
    cached = CachedProbe(probe, ttl=2.0, clock=clock)
    assert await cached.check() == Check(True, "up")
    clock.now += 1.9
    assert await cached.check() == Check(True, "up")
    assert probe.calls == 1
    clock.now += 0.2
    assert await cached.check() == Check(False, "down")
    assert probe.calls == 2


async def test_concurrent_callers_share_one_check() -> None:
    probe = _Probe(Check(True, "up"))
    probe.release.clear()
    cached = CachedProbe(probe, ttl=0.0)
    waiting = [asyncio.create_task(cached.check()) for _ in range(5)]
    await asyncio.sleep(0)
    probe.release.set()
    assert await asyncio.gather(*waiting) == [Check(True, "up")] * 5
    assert probe.calls == 1


async def test_a_probe_that_raises_or_hangs_is_a_failed_check() -> None:
    raising = CachedProbe(_Probe(ConnectionError("refused\nmore lines")), ttl=0.0)
    assert await raising.check() == Check(False, "ConnectionError: refused")
    hanging = _Probe(Check(True, "never seen"))
    hanging.release.clear()
    slow = CachedProbe(hanging, ttl=0.0, timeout=0.01)
    assert await slow.check() == Check(False, "no answer within 0.01s")


async def test_a_failure_seen_elsewhere_holds_until_the_ttl_ends() -> None:
    clock = _Clock()
    probe = _Probe(Check(True, "up"))
    cached = CachedProbe(probe, ttl=1.0, clock=clock)
    assert (await cached.check()).ok
    cached.mark_down("publish timed out")
    assert await cached.check() == Check(False, "publish timed out")
    clock.now += 1.0
    assert (await cached.check()).ok


async def test_registry_and_audit_log_probes(tmp_path: Path) -> None:
    registry = SqliteDeviceRegistry(tmp_path / "devices.sqlite3")
    audit = AuditLog(tmp_path / "audit.sqlite3")
    assert await registry_probe(registry)() == Check(True, "open")
    assert await audit_log_probe(audit)() == Check(True, "open, writable")
    registry.close()
    audit.close()
    for probe in (registry_probe(registry), audit_log_probe(audit)):
        assert not (await CachedProbe(probe).check()).ok


async def test_the_audit_log_probe_fails_before_its_disk_is_full(tmp_path: Path) -> None:
    # Every commit (audit log, ledger, outbox) lives on that disk: /healthz must say so
    # before the writes start failing, not after.
    audit = AuditLog(tmp_path / "audit.sqlite3")
    free = shutil.disk_usage(tmp_path).free
    check = await audit_log_probe(audit, min_free=free + 2**30)()
    assert not check.ok
    assert check.detail.startswith(f"{free // 2**20} MiB free on the disk of {tmp_path}")
    assert (await audit_log_probe(audit, min_free=1)()).ok
    audit.close()


async def test_healthz_names_every_dependency(app: FastAPI) -> None:
    async with asgi_client(app) as client:
        resp = await client.get("/healthz")
    assert resp.status_code == 200
    body = resp.json()
    assert (body["status"], body["region"], body["bus"], body["failing"]) == (
        "ok",
        "eu-test",
        "in-memory",
        [],
    )
    assert set(body["dependencies"]) == {"bus", "registry", "audit_log"}
    assert all(d["ok"] for d in body["dependencies"].values())


async def test_healthz_is_503_naming_the_bus_when_it_is_down(
    app: FastAPI, bus: InMemoryEnvelopeBus
) -> None:
    bus.fail_with = "the bus is down"
    async with asgi_client(app) as client:
        resp = await client.get("/healthz")
    assert resp.status_code == 503
    body = resp.json()
    assert (body["status"], body["failing"]) == ("unavailable", ["bus"])
    assert body["dependencies"]["bus"] == {"ok": False, "detail": "the bus is down"}


async def test_embedded_healthz_is_503_naming_the_warehouse_when_it_goes_away(
    settings: IngestSettings, tmp_path: Path
) -> None:
    sink = DuckDBSink(tmp_path / "wh.duckdb")
    async with asgi_client(create_app(settings, bus=InProcessEnvelopeBus(sink))) as client:
        sink.connection.close()  # the warehouse fails under a running ingest
        down: httpx.Response = await client.get("/healthz")
    assert down.status_code == 503
    assert down.json()["failing"] == ["warehouse"]
    assert "closed" in down.json()["dependencies"]["warehouse"]["detail"]


@pytest.mark.parametrize("path", ["/healthz"])
def test_healthz_documents_its_503(app: FastAPI, path: str) -> None:
    responses = app.openapi()["paths"][path]["get"]["responses"]
    assert {"200", "503"} <= set(responses)
