"""The device ledger against the real client, tried as an app would: an honest device
is never refused, and the ways around the client's own ledger (issue 8) are."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from client import MemoryTransport, SoftwareKeyStore, Telemetry, TelemetryConfig
from ingest import EnvelopeVerifier, InMemoryEnvelopeBus, RecentlyAccepted
from ingest._device_ledger import DeviceLedger
from ingest._intake import EnvelopeIntake
from ingest._report_rules import ReportRules
from policies import PILOT_POLICY_PATH, load_policy, window_charge
from schemas import AppInfo, BatchResult, EnvelopeBatch, IngestedEnvelope, Tier

PILOT = load_policy(PILOT_POLICY_PATH)  # local model: no helper needed; cap 16 a day
CAP = Decimal(repr(PILOT.privacy.daily_epsilon))
# What one window of the health and performance signals costs (content not consented).
PER_DAY = window_charge(PILOT, [n for n, s in PILOT.signals.items() if s.tier is not Tier.CONTENT])
assert PER_DAY <= CAP < 2 * PER_DAY
DAY = timedelta(days=1)
T0 = datetime(2026, 3, 2, tzinfo=UTC)  # aligned to the policy's one-day windows


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Ingest:
    """The real intake (verifier, device ledger, in-memory bus) behind a transport."""

    def __init__(self, tmp_path: Path, clock: Clock) -> None:
        self.key = PrivateKey.generate()
        self.clock = clock
        self.bus = InMemoryEnvelopeBus()
        self.ledger = DeviceLedger(tmp_path / "ledger.sqlite3", [PILOT])
        verifier = EnvelopeVerifier(
            self.key,
            region="eu-test",
            known_policy_hashes=[PILOT.content_hash],
            report_rules=ReportRules([PILOT]),
        )
        self.intake = EnvelopeIntake(
            verifier, self.bus, RecentlyAccepted(64), ledger=self.ledger, clock=clock
        )

    def handle(self, batch: EnvelopeBatch) -> BatchResult:
        return asyncio.run(self.intake.submit(batch.envelopes))

    def spent(self, device_id: str) -> Decimal:
        return self.ledger.spent(device_id, self.clock.now.date().isoformat())

    def stored(self) -> list[IngestedEnvelope]:
        return [e for e in self.bus.published if isinstance(e, IngestedEnvelope)]


@pytest.fixture
def ingest_clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def ingest(tmp_path: Path, ingest_clock: Clock) -> Iterator[Ingest]:
    server = Ingest(tmp_path, ingest_clock)
    yield server
    server.ledger.close()


def _device(
    ingest: Ingest, state_dir: Path, clock: Clock, keys: SoftwareKeyStore | None = None
) -> Telemetry:
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-test",
            policy=PILOT,
            ingest_public_key=bytes(ingest.key.public_key),
            transport=MemoryTransport(ingest.handle),
            state_dir=state_dir,
            key_store=keys,
            clock=clock,
            mode="manual",
            retry_backoff=0.0,
            max_attempts=1,
        )
    )
    qw.grant_consent(Tier.HEALTH)
    qw.grant_consent(Tier.PERFORMANCE)
    return qw


def _rejected(qw: Telemetry) -> dict[str, int]:
    return {k: n for k, n in qw.dropped().items() if k.startswith("rejected:")}


def test_an_honest_device_is_never_refused(
    ingest: Ingest, ingest_clock: Clock, tmp_path: Path
) -> None:
    clock = Clock(T0)
    qw = _device(ingest, tmp_path / "device", clock)
    try:
        for _ in range(3):
            qw.record("inference.requests", 1, route="local", model="qwen2.5-7b@1.1")
            clock.now += DAY
            ingest_clock.now = clock.now + timedelta(seconds=2)  # sent as the day ends
            qw.collect()
            assert qw.flush()
            assert ingest.spent(qw.device_id) == PER_DAY
    finally:
        qw.shutdown(carry_open_window=False)
    assert _rejected(qw) == {}
    assert len(ingest.stored()) == 3


def test_two_state_directories_sharing_one_key_release_one_days_budget(
    ingest: Ingest, ingest_clock: Clock, tmp_path: Path
) -> None:
    keys = SoftwareKeyStore(tmp_path / "keys")
    clock = Clock(T0)
    first = _device(ingest, tmp_path / "first", clock, keys)
    second = _device(ingest, tmp_path / "second", clock, keys)
    try:
        assert first.device_id == second.device_id
        clock.now += DAY
        ingest_clock.now = clock.now + timedelta(minutes=1)
        for qw in (first, second):  # each directory's own ledger grants its 16
            qw.collect()
            assert qw.flush()
    finally:
        first.shutdown(carry_open_window=False)
        second.shutdown(carry_open_window=False)
    assert _rejected(first) == {}
    assert _rejected(second) == {"rejected:sequence_not_increasing": 1}
    assert ingest.spent(first.device_id) == PER_DAY
    assert len(ingest.stored()) == 1


def test_a_device_clock_moved_forward_releases_one_days_budget_per_ingest_day(
    ingest: Ingest, ingest_clock: Clock, tmp_path: Path
) -> None:
    """Three days of windows in one hour of the ingest's clock: the device's clock
    jumps a day every twenty minutes (never ahead of the ingest's)."""
    clock = Clock(T0)
    ingest_clock.now = T0 + 3 * DAY + timedelta(minutes=5)
    qw = _device(ingest, tmp_path / "device", clock)
    try:
        for day in range(3):
            clock.now += DAY
            qw.collect()
            # Refused for the ingest's day, the later windows are kept for its next day.
            assert qw.flush() is (day == 0)
            ingest_clock.now += timedelta(minutes=20)
        assert qw.pending == 2
    finally:
        qw.shutdown(carry_open_window=False)
    # The client's ledger granted each window (one per device day); the ingest one.
    assert Decimal(repr(qw.privacy_spent()[1])) == 3 * PER_DAY
    assert _rejected(qw) == {}
    # Counted per refusal: the second window on two ingest answers, the third on one.
    assert qw.dropped()["deferred:budget_exceeded"] == 3
    assert ingest.spent(qw.device_id) == PER_DAY
