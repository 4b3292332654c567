"""A laptop that sleeps: the budget's real time counts the night it slept (review
finding 2). After an 8 h suspend the next day's release is neither held nor suppressed
and the budget clock keeps the time of day; the cap still holds over any 24 real hours,
sleep included; charges an earlier release stamped in this boot on `time.monotonic`
(which stops in suspend) are aged on that clock, so an upgrade frees no budget."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from client import MemoryTransport, Telemetry, TelemetryConfig
from client._clock import BudgetClock, ClockReading, boot_id, real_clock_id
from client._ledger import PrivacyLedger
from client._privacy import MAX_HOLD_SECONDS
from client._realtime import REAL_CLOCK, suspend_aware_monotonic
from policies import Policy
from schemas import AppInfo, Tier
from tests.client.conftest import POLICY, FakeClock, MemoryIngest

MIDNIGHT = datetime(2026, 3, 3, tzinfo=UTC)
# One-day windows whose every release costs the whole daily cap.
DAILY = POLICY.model_copy(
    update={
        "window_seconds": 86_400,
        "privacy": POLICY.privacy.model_copy(update={"daily_epsilon": 2.0}),
    }
)
BOOT = "boot-laptop"


class Laptop:
    """A machine's clocks: the wall clock, `CLOCK_MONOTONIC` (awake time only, as
    `time.monotonic` on Linux) and `CLOCK_BOOTTIME` (awake and asleep)."""

    def __init__(self, wall: FakeClock) -> None:
        self.wall = wall
        self.awake = 5_000.0
        self.asleep = 0.0

    def monotonic(self) -> float:
        return self.awake

    def boottime(self) -> float:
        return self.awake + self.asleep

    def run(self, seconds: float) -> None:
        self.awake += seconds
        self.wall.now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.asleep += seconds
        self.wall.now += timedelta(seconds=seconds)


def _device(tmp_path: Path, ingest: MemoryIngest, laptop: Laptop, policy: Policy) -> Telemetry:
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=policy,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            clock=laptop.wall,
            monotonic=laptop.boottime,
            mode="manual",
        )
    )
    for tier in (Tier.HEALTH, Tier.PERFORMANCE):
        qw.grant_consent(tier)
    return qw


@pytest.mark.skipif(sys.platform != "linux", reason="CLOCK_BOOTTIME is Linux's")
def test_on_linux_the_real_time_clock_is_boottime() -> None:
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    reading = suspend_aware_monotonic()
    after = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert REAL_CLOCK == "boottime"
    assert before <= reading <= after


def test_the_default_budget_clock_names_its_clock_apart_from_time_monotonic() -> None:
    reading = BudgetClock(lambda: datetime.now(UTC)).read()
    # Readings of the new clock are never compared with time.monotonic's...
    assert reading.boot == real_clock_id() != boot_id()
    # ...which every reading also carries, under the name earlier releases used.
    assert reading.legacy is not None
    assert reading.legacy[0] == boot_id()
    stamped_before = ClockReading(reading.wall, boot_id(), reading.legacy[1] - 60.0)
    assert reading.seconds_since(stamped_before) == 60.0


def test_after_a_night_asleep_the_next_days_release_is_made(
    tmp_path: Path, ingest: MemoryIngest
) -> None:
    laptop = Laptop(FakeClock(MIDNIGHT - timedelta(hours=1)))
    qw = _device(tmp_path, ingest, laptop, DAILY)
    laptop.run(3605)  # yesterday's window is released 5 s after midnight
    (first,) = qw.collect()
    assert first.aggregates
    assert not first.suppressed
    # A day at work, a night asleep, then the window is due just after midnight.
    laptop.run(15 * 3600)
    laptop.sleep(8 * 3600)
    laptop.run(3600 + 5)
    assert laptop.wall.now == MIDNIGHT + timedelta(days=1, seconds=10)
    (second,) = qw.collect()
    assert second.aggregates
    assert not second.suppressed
    assert qw.privacy_spent()[1] == 2 * DAILY.privacy.daily_epsilon


def test_a_release_under_24_real_hours_after_the_last_waits_sleep_included(
    tmp_path: Path, ingest: MemoryIngest
) -> None:
    laptop = Laptop(FakeClock(MIDNIGHT - timedelta(hours=1)))
    qw = _device(tmp_path, ingest, laptop, DAILY)
    laptop.run(3605)
    (first,) = qw.collect()
    assert first.aggregates
    # 8 h of the next 86,396 s asleep: the next window is due 4 s short of a real day.
    laptop.run(12 * 3600)
    laptop.sleep(8 * 3600)
    laptop.run(86_396 - 20 * 3600)
    assert qw.collect() == []  # held for the budget, not released early
    laptop.run(4)
    (second,) = qw.collect()
    assert second.aggregates
    assert not second.suppressed


def test_the_ledger_refuses_a_charge_within_24_real_hours_sleep_included(
    tmp_path: Path,
) -> None:
    laptop = Laptop(FakeClock(MIDNIGHT))
    clock = BudgetClock(laptop.wall, laptop.boottime, boot=f"{BOOT}/boottime")
    with PrivacyLedger(tmp_path / "ledger", DAILY.privacy) as ledger:
        assert ledger.try_charge("app.starts", 2.0, MIDNIGHT, now=clock.read())
        laptop.sleep(20 * 3600)
        laptop.run(3 * 3600)
        now = clock.read()
        # An hour short of a day: refused, and far too long to hold for.
        assert ledger.seconds_until_room(2.0, now) == 3600.0 > MAX_HOLD_SECONDS
        assert not ledger.try_charge("app.starts", 2.0, MIDNIGHT + timedelta(days=1), now=now)
        laptop.run(3600)
        now = clock.read()
        assert ledger.seconds_until_room(2.0, now) == 0.0
        assert ledger.try_charge("app.starts", 2.0, MIDNIGHT + timedelta(days=1), now=now)


def test_the_time_of_day_keeps_the_ingests_clock_through_a_suspend() -> None:
    laptop = Laptop(FakeClock(datetime(2026, 3, 2, 20, tzinfo=UTC)))
    learned = (laptop.wall.now, laptop.boottime())  # an answer's Date, wall agreeing
    clock = BudgetClock(laptop.wall, laptop.boottime, boot=BOOT, server_time=lambda: learned)
    # The same on a clock that stops in suspend (the review's reproduction).
    stopped = BudgetClock(laptop.wall, laptop.monotonic, boot=BOOT, server_time=lambda: learned)
    assert clock.now() == stopped.now() == laptop.wall.now
    laptop.sleep(8 * 3600)
    laptop.run(5 * 60)
    assert clock.ingest_now() == laptop.wall.now
    assert clock.now() == laptop.wall.now
    # The stopped clock's estimate is the night behind, and wins over the wall clock.
    assert stopped.now() == laptop.wall.now - timedelta(hours=8)


def test_an_upgrade_mid_boot_ages_earlier_charges_on_their_own_clock(tmp_path: Path) -> None:
    laptop = Laptop(FakeClock(MIDNIGHT))
    laptop.sleep(8 * 3600)  # a night asleep since boot: the two clocks differ by 8 h
    path = tmp_path / "ledger"
    # The earlier release stamped its charge on time.monotonic, named by the boot alone.
    with PrivacyLedger(path, DAILY.privacy) as ledger:
        stamped = ClockReading(laptop.wall.now.timestamp(), BOOT, laptop.monotonic())
        assert ledger.try_charge("app.starts", 2.0, laptop.wall.now, now=stamped)
    laptop.run(20 * 3600)
    laptop.wall.now += timedelta(days=2)  # and the user moves the wall clock forward
    # Compared with the new clock as if it were the same, the charge would look 28 h
    # old: 8 h of budget freed early.
    assert ClockReading(0.0, BOOT, laptop.boottime()).seconds_since(stamped) == 28 * 3600
    upgraded = BudgetClock(
        laptop.wall, laptop.boottime, boot=f"{BOOT}/boottime", legacy=(BOOT, laptop.monotonic)
    )
    day_after = MIDNIGHT + timedelta(days=1)
    with PrivacyLedger(path, DAILY.privacy) as ledger:
        now = upgraded.read()
        assert now.seconds_since(stamped) == 20 * 3600
        assert ledger.seconds_until_room(2.0, now) == 4 * 3600
        assert not ledger.try_charge("app.starts", 2.0, day_after, now=now)
        laptop.run(4 * 3600)
        assert ledger.try_charge("app.starts", 2.0, day_after, now=upgraded.read())
