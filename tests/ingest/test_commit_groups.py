"""Waves and the audit log's group commit: concurrent requests share transactions, each
still answered only after its own commit, and a failure reaches every waiter."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import httpx
import pytest
from nacl.public import PrivateKey

from auditlog import AuditEntry, AuditLog, AuditRecord
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app
from ingest._audit_group import GroupedAudit
from ingest._waves import Waves
from tests.ingest.kit import Device, asgi_client


class _CountingLog(AuditLog):
    """An audit log that counts its transactions (and can be made to fail)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.transactions: list[int] = []
        self.fail: Exception | None = None

    def append_many(self, records: Sequence[AuditRecord]) -> list[AuditEntry]:
        if self.fail is not None:
            raise self.fail
        self.transactions.append(len(records))
        return super().append_many(records)


async def test_a_wave_waits_for_the_one_in_flight_and_then_starts_whole() -> None:
    waves = Waves()
    release_first = asyncio.Event()
    events: list[str] = []

    async def first() -> str:
        events.append("first starts")
        await release_first.wait()
        events.append("first ends")
        return "first"

    async def later(name: str) -> str:
        events.append(f"{name} starts")
        await asyncio.sleep(0)
        return name

    running = asyncio.create_task(waves.run(first))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(waves.run(partial(later, n))) for n in ("a", "b", "c")]
    await asyncio.sleep(0.01)
    assert events == ["first starts"]  # the next wave waits for the one in flight
    release_first.set()
    assert await asyncio.gather(running, *queued) == ["first", "a", "b", "c"]
    assert events[:2] == ["first starts", "first ends"]
    assert sorted(events[2:]) == ["a starts", "b starts", "c starts"]


async def test_a_cancelled_waiter_does_not_hold_up_its_wave() -> None:
    waves = Waves()
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    async def quick() -> str:
        return "done"

    running = asyncio.create_task(waves.run(hold))
    await asyncio.sleep(0)
    gone = asyncio.create_task(waves.run(quick))
    stays = asyncio.create_task(waves.run(quick))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await running
    assert await stays == "done"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await waves.run(quick) == "done"  # and the gate is open again


async def test_concurrent_appends_share_one_transaction_in_arrival_order(tmp_path: Path) -> None:
    log = _CountingLog(tmp_path / "audit.sqlite3")
    grouped = GroupedAudit(log)
    first = [AuditRecord("envelope", "accepted", "d1", None, "one")]
    batches = [
        [AuditRecord("envelope", "accepted", f"d{i}", None, f"{i}.{j}") for j in range(3)]
        for i in range(2, 6)
    ]
    # All five queue before the writer runs: one transaction, each call's records together.
    await asyncio.gather(grouped.append(first), *(grouped.append(b) for b in batches))
    assert log.transactions == [13]
    details = [e.detail for e in log.entries()]
    assert details == ["one", *(r.detail for b in batches for r in b)]
    assert log.verify_chain().ok
    log.close()


async def test_a_failed_group_commit_reaches_every_waiter(tmp_path: Path) -> None:
    log = _CountingLog(tmp_path / "audit.sqlite3")
    log.fail = OSError("disk gone")
    grouped = GroupedAudit(log)
    record = AuditRecord("envelope", "accepted", "d", None, "x")
    results = await asyncio.gather(
        *(grouped.append([record]) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, OSError) for r in results)
    log.fail = None
    await grouped.append([record])  # the next group commits
    assert log.transactions == [1]
    log.close()


async def test_concurrent_requests_are_each_answered_after_their_entries_are_stored(
    settings: IngestSettings, ingest_key: PrivateKey, bus: InMemoryEnvelopeBus
) -> None:
    devices = [Device("eu-test") for _ in range(12)]
    async with asgi_client(create_app(settings, bus=bus)) as client:

        async def post(device: Device) -> httpx.Response:
            body = {"envelopes": [device.item(ingest_key.public_key)]}
            return await client.post("/v1/envelopes", json=body)

        answers = await asyncio.gather(*(post(d) for d in devices))
        assert [a.status_code for a in answers] == [202] * 12
    log = AuditLog(settings.state_dir / "audit.sqlite3", read_only=True)
    accepted = log.entries(action="envelope", decision="accepted")
    assert sorted(e.device_id or "" for e in accepted) == sorted(d.device_id for d in devices)
    assert log.verify_chain().ok
    log.close()
    assert len(bus.published) == 12
