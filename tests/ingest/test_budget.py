"""The ingest's per-device epsilon ledger: the day is the ingest's, the cap the strictest
of the policies the device used that day, and it survives a restart. The three ways a
device got past the client's ledger (issue 8) are refused here."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.public import PrivateKey

from auditlog import AuditLog
from client._shares import ReportSharer
from ingest import IngestSettings, InMemoryEnvelopeBus, create_app
from ingest._device_ledger import DeviceLedger
from policies import PILOT_POLICY_PATH, aggregation_tasks, load_policy
from schemas import BatchResult
from tests.ingest.kit import FIRST_WINDOW, SERVED_POLICIES, WINDOW, Device, asgi_client

REGION = "eu-test"
PILOT = load_policy(PILOT_POLICY_PATH)
DEFAULT = load_policy()
PER_RELEASE = Decimal("2.6")  # the kit's release: pilot's inference.requests
assert Decimal(repr(PILOT.signals["inference.requests"].epsilon)) == PER_RELEASE
FITS = 6  # 6 x 2.6 = 15.6 <= pilot's daily cap of 16
T0 = FIRST_WINDOW + timedelta(days=31, hours=9)
"""The ingest's clock at the start of each test: a month after the kit's first window
(one day each), so no envelope of the tests runs ahead of it (clock_skew) and none is
older than its tiers' retention (window_expired; performance: 90 days)."""


class Clock:
    """The ingest's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path: Path, ingest_key: PrivateKey) -> IngestSettings:
    return IngestSettings(
        policy_paths=SERVED_POLICIES,
        region=REGION,
        private_key_path=tmp_path / "ingest.key",
        state_dir=tmp_path / "state",
        max_batch=32,
    )


@pytest.fixture
async def client(
    settings: IngestSettings, bus: InMemoryEnvelopeBus, clock: Clock
) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(settings, bus=bus, clock=clock)) as c:
        yield c


async def _post(client: httpx.AsyncClient, items: list[str]) -> BatchResult:
    resp = await client.post("/v1/envelopes", json={"envelopes": items})
    assert resp.status_code in (202, 422), resp.text
    return BatchResult.model_validate_json(resp.content)


def _reasons(result: BatchResult) -> list[str | None]:
    return [r.reason.value if r.status == "rejected" and r.reason else None for r in result.results]


def _spent(settings: IngestSettings, device: Device, day: datetime) -> Decimal:
    ledger = DeviceLedger(settings.state_dir / DeviceLedger.FILE_NAME, [])
    try:
        return ledger.spent(device.device_id, day.date().isoformat())
    finally:
        ledger.close()


def _twin(device: Device) -> Device:
    """A second state directory holding the same device key: its own sequence and
    windows, the same device id."""
    twin = Device(device.region)
    twin.key, twin.public_key, twin.device_id = device.key, device.public_key, device.device_id
    return twin


async def test_a_device_spends_up_to_its_daily_cap_then_is_refused(
    client: httpx.AsyncClient,
    ingest_key: PrivateKey,
    device: Device,
    settings: IngestSettings,
    clock: Clock,
) -> None:
    items = [device.item(ingest_key.public_key) for _ in range(FITS + 2)]
    result = await _post(client, items)
    assert _reasons(result) == [None] * FITS + ["budget_exceeded"] * 2
    assert "over the cap of 16.0" in (result.results[-1].detail or "")
    assert _spent(settings, device, clock.now) == FITS * PER_RELEASE
    # The next ingest day, the device may spend again.
    clock.now += timedelta(days=1)
    assert _reasons(await _post(client, [device.item(ingest_key.public_key)])) == [None]


async def test_two_state_directories_sharing_one_key_get_one_budget(
    client: httpx.AsyncClient,
    ingest_key: PrivateKey,
    device: Device,
    settings: IngestSettings,
    clock: Clock,
) -> None:
    twin = _twin(device)
    first = await _post(client, [device.item(ingest_key.public_key) for _ in range(FITS)])
    assert first.accepted == FITS
    # The twin restarts from sequence 1 and the same windows: a replay of the device.
    replayed = await _post(client, [twin.item(ingest_key.public_key) for _ in range(2)])
    assert _reasons(replayed) == ["sequence_not_increasing"] * 2
    # Numbered and timed after the first directory's envelopes, it is held by the budget.
    later = [
        twin.item(
            ingest_key.public_key,
            twin.envelope(
                sequence=100 + n,
                window_start=(FIRST_WINDOW + WINDOW * (FITS + n)).isoformat(),
                window_end=(FIRST_WINDOW + WINDOW * (FITS + n + 1)).isoformat(),
                sent_at=(FIRST_WINDOW + WINDOW * (FITS + n + 1)).isoformat(),
            ),
        )
        for n in range(FITS)
    ]
    assert _reasons(await _post(client, later)) == ["budget_exceeded"] * FITS
    assert _spent(settings, device, clock.now) == FITS * PER_RELEASE


async def test_switching_policy_mid_day_keeps_the_strictest_cap(
    client: httpx.AsyncClient,
    ingest_key: PrivateKey,
    device: Device,
    settings: IngestSettings,
    clock: Clock,
) -> None:
    # First under the default policy (daily cap 4): Prio3 reports of inference.errors.
    sharer = ReportSharer(DEFAULT.content_hash, bytes(PrivateKey.generate().public_key))
    start = FIRST_WINDOW  # the kit's next window: the device's first
    reports = [
        sharer.report(task, [0] * task.length, start).model_dump(mode="json")
        for task in aggregation_tasks(DEFAULT).values()
        if task.signal == "inference.errors"
    ]
    under_default = device.envelope(
        policy_hash=DEFAULT.content_hash, aggregates=[], reports=reports
    )
    # Then under the pilot policy (daily cap 16), the same ingest day.
    items = [device.item(ingest_key.public_key, under_default)]
    items += [device.item(ingest_key.public_key) for _ in range(FITS)]
    result = await _post(client, items)
    # 0.5 + 2.6 = 3.1 fits the default's cap of 4; a second pilot release would not.
    assert _reasons(result) == [None, None] + ["budget_exceeded"] * (FITS - 1)
    assert "over the cap of 4.0" in (result.results[2].detail or "")
    assert _spent(settings, device, clock.now) == Decimal("3.1")


async def test_a_clock_moved_forward_cannot_spend_three_days_in_one_hour(
    client: httpx.AsyncClient,
    ingest_key: PrivateKey,
    device: Device,
    settings: IngestSettings,
    clock: Clock,
) -> None:
    """The device's windows claim three days' worth of budget (each window one day,
    one release each); the ingest's clock says one hour."""
    items = [device.item(ingest_key.public_key) for _ in range(3 * FITS)]
    accepted = 0
    for n in range(0, len(items), 6):  # six requests over the hour
        accepted += (await _post(client, items[n : n + 6])).accepted
        clock.now += timedelta(minutes=10)
    assert accepted == FITS  # one day's budget, not three
    assert _spent(settings, device, clock.now) == FITS * PER_RELEASE


async def test_the_ledger_survives_a_restart(
    settings: IngestSettings, ingest_key: PrivateKey, device: Device, clock: Clock
) -> None:
    envs = [device.envelope() for _ in range(FITS)]
    async with asgi_client(create_app(settings, bus=InMemoryEnvelopeBus(), clock=clock)) as c:
        spent = await _post(c, [device.item(ingest_key.public_key, e) for e in envs])
        assert spent.accepted == FITS
    async with asgi_client(create_app(settings, bus=InMemoryEnvelopeBus(), clock=clock)) as c:
        assert _reasons(await _post(c, [device.item(ingest_key.public_key)])) == ["budget_exceeded"]
        replay = device.item(ingest_key.public_key, envs[0] | {"envelope_id": str(uuid.uuid4())})
        assert _reasons(await _post(c, [replay])) == ["sequence_not_increasing"]


async def test_releases_under_a_policy_known_by_hash_only_are_refused(
    tmp_path: Path, ingest_key: PrivateKey, device: Device, clock: Clock
) -> None:
    unserved = PILOT.model_copy(update={"window_seconds": 3600})
    settings = IngestSettings(
        policy_paths=SERVED_POLICIES,
        known_policy_hashes=frozenset({unserved.content_hash}),
        region=REGION,
        private_key_path=tmp_path / "ingest.key",
        state_dir=tmp_path / "state",
    )
    bus = InMemoryEnvelopeBus()
    async with asgi_client(create_app(settings, bus=bus, clock=clock)) as c:
        priced: dict[str, Any] = {"policy_hash": unserved.content_hash}
        result = await _post(
            c,
            [
                device.item(ingest_key.public_key, device.envelope(**priced)),
                device.item(ingest_key.public_key, device.envelope(**priced, aggregates=[])),
            ],
        )
    # The release cannot be priced; an envelope that releases nothing costs nothing.
    assert _reasons(result) == ["policy_not_served", None]
    assert len(bus.published) == 1


async def test_every_refusal_is_audited_with_its_reason_and_device(
    client: httpx.AsyncClient, ingest_key: PrivateKey, device: Device, settings: IngestSettings
) -> None:
    envs = [device.envelope() for _ in range(FITS + 1)]
    overlapping = device.envelope(
        window_start=envs[0]["window_start"], window_end=envs[0]["window_end"]
    )
    misaligned = device.envelope(
        window_start=(FIRST_WINDOW + timedelta(days=2, hours=12)).isoformat(),
        window_end=(FIRST_WINDOW + timedelta(days=3, hours=12)).isoformat(),
        sent_at=(FIRST_WINDOW + timedelta(days=3, hours=12, seconds=5)).isoformat(),
    )
    replay = envs[0] | {"envelope_id": str(uuid.uuid4())}
    items = [device.item(ingest_key.public_key, e) for e in [*envs, replay]]
    items += [device.item(ingest_key.public_key, e) for e in (overlapping, misaligned)]
    result = await _post(client, items)
    expected = [
        "budget_exceeded",
        "sequence_not_increasing",
        "duplicate_window",
        "window_misaligned",
    ]
    assert _reasons(result) == [None] * FITS + expected
    log = AuditLog(settings.state_dir / "audit.sqlite3")
    try:
        refused = log.entries(device_id=device.device_id, decision="rejected")
    finally:
        log.close()
    assert [e.reason for e in refused] == expected
    assert all(e.detail for e in refused)
