"""Waves and the audit log's group commit: concurrent requests share transactions, each
still answered only after its own commit, and a failure reaches every waiter."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from nacl.public import PrivateKey

from auditlog import AuditEntry, AuditLog, AuditRecord
from ingest import (
    EnvelopeIntake,
    EnvelopeVerifier,
    IngestSettings,
    InMemoryEnvelopeBus,
    RecentlyAccepted,
    create_app,
)
from ingest._audit_group import GroupedAudit
from ingest._bus import BusItem
from ingest._device_ledger import DeviceLedger
from ingest._errors import AuditUnavailable
from ingest._group_commit import GroupCommit
from ingest._report_rules import ReportRules
from ingest._verify import Verdict
from policies import load_policy
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client


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


class _GatedBus(InMemoryEnvelopeBus):
    """Counts publishes; the first one waits until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.publishes: list[int] = []

    async def publish(
        self, items: Sequence[BusItem], encoded: Sequence[bytes] | None = None
    ) -> None:
        self.publishes.append(len(items))
        self.started.set()
        if len(self.publishes) == 1:
            await self.release.wait()
        await super().publish(items, encoded)


def _intake(
    tmp_path: Path, key: PrivateKey, bus: InMemoryEnvelopeBus, *, linger: float = 0.0
) -> EnvelopeIntake:
    policies = [load_policy(p) for p in SERVED_POLICIES]
    verifier = EnvelopeVerifier(
        key,
        region="eu-test",
        known_policy_hashes={p.content_hash for p in policies},
        report_rules=ReportRules(policies),
    )
    return EnvelopeIntake(
        verifier,
        bus,
        RecentlyAccepted(100),
        _CountingLog(tmp_path / "audit.sqlite3"),
        ledger=DeviceLedger(tmp_path / "ledger.sqlite3", policies),
        linger=linger,
    )


async def test_a_wave_waits_for_the_one_in_flight_and_then_commits_whole(
    tmp_path: Path,
) -> None:
    key = PrivateKey.generate()
    bus = _GatedBus()
    intake = _intake(tmp_path, key, bus)
    first = asyncio.create_task(intake.submit([Device("eu-test").item(key.public_key)]))
    await bus.started.wait()
    later = [
        asyncio.create_task(intake.submit([Device("eu-test").item(key.public_key)]))
        for _ in range(3)
    ]
    await asyncio.sleep(0.05)
    assert bus.publishes == [1]  # the next wave waits for the one in flight
    bus.release.set()
    results = await asyncio.gather(first, *later)
    assert [r.accepted for r in results] == [1, 1, 1, 1]
    assert bus.publishes == [1, 3]  # then its three requests are one publish
    assert intake._audit_group is not None
    log = intake._audit_group.audit
    assert isinstance(log, _CountingLog)
    assert log.transactions == [1, 3]  # and one audit transaction


def _record_verification(
    monkeypatch: pytest.MonkeyPatch, *, poison: str | None = None
) -> list[str]:
    """Every item verified from now on, in order; verifying `poison` raises (a bug)."""
    verify = EnvelopeVerifier.verify
    verified: list[str] = []

    def recording(self: EnvelopeVerifier, item: str, *, received_at: datetime) -> Verdict:
        if item == poison:
            raise RuntimeError("a bug in verification")
        verified.append(item)
        return verify(self, item, received_at=received_at)

    monkeypatch.setattr(EnvelopeVerifier, "verify", recording)
    return verified


async def test_a_wave_verifies_its_requests_together_and_a_failure_stays_with_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items are verified by their wave, back to back; if verifying one request fails
    unexpectedly (a bug, not a refused item), that request alone gets the error."""
    key = PrivateKey.generate()
    bus = _GatedBus()
    intake = _intake(tmp_path, key, bus)
    poison = Device("eu-test").item(key.public_key)
    verified = _record_verification(monkeypatch, poison=poison)
    first = asyncio.create_task(intake.submit([Device("eu-test").item(key.public_key)]))
    await bus.started.wait()
    good = [Device("eu-test").item(key.public_key) for _ in range(2)]
    waiting = [asyncio.create_task(intake.submit([item])) for item in good]
    bad = asyncio.create_task(intake.submit([poison]))
    await asyncio.sleep(0.05)
    assert verified[1:] == []  # the next wave has not verified anything yet
    bus.release.set()
    results = await asyncio.gather(first, *waiting)
    assert [r.accepted for r in results] == [1, 1, 1]
    assert verified[1:] == good
    with pytest.raises(RuntimeError, match="a bug in verification"):
        await bad
    assert bus.publishes == [1, 2]


async def test_a_large_wave_lets_the_loop_run_while_it_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wave of many small requests yields to the loop every 64 KiB of items, so a
    health probe is not held up for the whole wave's verification."""
    key = PrivateKey.generate()
    bus = _GatedBus()
    intake = _intake(tmp_path, key, bus)
    verified = _record_verification(monkeypatch)
    first = asyncio.create_task(intake.submit([Device("eu-test").item(key.public_key)]))
    await bus.started.wait()
    items = [Device("eu-test").item(key.public_key) for _ in range(80)]
    assert sum(map(len, items)) > 2 * 64 * 1024
    waiting = [asyncio.create_task(intake.submit([item])) for item in items]
    await asyncio.sleep(0.01)
    seen: list[int] = []
    bus.release.set()
    while not all(t.done() for t in waiting):
        seen.append(len(verified))
        await asyncio.sleep(0)
    await first
    assert all(t.result().accepted == 1 for t in waiting)
    # The loop ran (this task with it) while the wave was part-way verified.
    assert any(1 < n < 1 + len(items) for n in seen), seen


@pytest.mark.parametrize(("linger", "publishes"), [(0.0, [2, 1, 1]), (0.2, [2, 2])])
async def test_under_load_a_wave_lingers_for_requests_just_behind_it(
    tmp_path: Path, linger: float, publishes: list[int]
) -> None:
    key = PrivateKey.generate()
    bus = _GatedBus()
    bus.release.set()
    intake = _intake(tmp_path, key, bus, linger=linger)

    async def one() -> int:
        return (await intake.submit([Device("eu-test").item(key.public_key)])).accepted

    assert list(await asyncio.gather(one(), one())) == [1, 1]  # concurrent: a wave of two
    first = asyncio.create_task(one())
    await asyncio.sleep(0.02)  # the second arrives 20 ms behind the first
    assert list(await asyncio.gather(first, one())) == [1, 1]
    assert bus.publishes == publishes


async def test_a_quiet_ingest_does_not_linger(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    bus = _GatedBus()
    bus.release.set()
    intake = _intake(tmp_path, key, bus, linger=5.0)
    for _ in range(3):  # one request at a time: no wait, whatever the linger
        async with asyncio.timeout(2.0):
            await intake.submit([Device("eu-test").item(key.public_key)])
    assert bus.publishes == [1, 1, 1]


async def test_a_cancelled_requester_does_not_hold_up_its_wave(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    bus = _GatedBus()
    intake = _intake(tmp_path, key, bus)
    first = asyncio.create_task(intake.submit([Device("eu-test").item(key.public_key)]))
    await bus.started.wait()
    gone = asyncio.create_task(intake.submit([Device("eu-test").item(key.public_key)]))
    stays = asyncio.create_task(intake.submit([Device("eu-test").item(key.public_key)]))
    await asyncio.sleep(0.01)
    gone.cancel()
    bus.release.set()
    assert (await first).accepted == 1
    assert (await stays).accepted == 1
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert len(bus.published) == 3  # the cancelled request's envelope is still durable
    again = await intake.submit([Device("eu-test").item(key.public_key)])
    assert again.accepted == 1  # and the next wave runs


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
    # Each waiter hears its own 503 naming the cause (not a bare 500 from an OSError).
    assert all(isinstance(r, AuditUnavailable) for r in results)
    assert all("disk gone" in str(r) for r in results)
    assert len({id(r) for r in results}) == 3
    log.fail = None
    await grouped.append([record])  # the next group commits
    assert log.transactions == [1]
    log.close()


async def test_a_gone_callers_entry_is_still_committed_and_seen_by_then() -> None:
    """A caller that disconnects does not cancel the commit, and the bookkeeping after
    it (`then`) sees every entry, answered or not."""
    release = threading.Event()
    committed: list[list[str]] = []
    seen: list[list[str]] = []

    def commit(entries: list[str]) -> list[int]:
        release.wait(5)
        committed.append(entries)
        return [len(e) for e in entries]

    group: GroupCommit[str, int] = GroupCommit(
        commit, then=lambda entries, _results: seen.append(entries)
    )
    first = asyncio.create_task(group.submit("a"))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(group.submit("bb"))
    stays = asyncio.create_task(group.submit("ccc"))
    await asyncio.sleep(0.01)
    gone.cancel()
    release.set()
    assert (await first, await stays) == (1, 3)
    with pytest.raises(asyncio.CancelledError):
        await gone
    await group.idle()
    assert committed == [["a"], ["bb", "ccc"]]
    assert seen == committed


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
