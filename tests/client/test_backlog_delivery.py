"""A backlog from days offline reaches the real ingest whole, one day's budget per
ingest day, and nothing leaves the device ahead of the ingest's clock.

The ingest charges each device's envelopes to the UTC day it *receives* them, up to
one day's cap (`budget_exceeded`); its skew rule refuses a window that ends ahead of
its clock (`clock_skew`). The client keeps both kinds spooled (their budget was spent
on the device) and sends them when the ingest's time allows (`client._send_hold`).
These run the client's `HttpTransport` against `ingest.create_app` in-process, on a
clock the test moves, and the device's monotonic clock moves with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from client import Telemetry
from policies import window_charge
from schemas import Tier
from tests.client.ingest_app import PILOT, T0, IngestApp, Time, not_delivered, pilot_device

CAP = Decimal(repr(PILOT.privacy.daily_epsilon))
PER_WINDOW = window_charge(
    PILOT, [n for n, s in PILOT.signals.items() if s.tier is not Tier.CONTENT]
)
assert PER_WINDOW <= CAP < 2 * PER_WINDOW  # the ingest accepts one window a day
DAY = timedelta(days=1)


@pytest.fixture
def device(server: IngestApp, time_: Time, tmp_path: Path) -> Iterator[Telemetry]:
    qw = pilot_device(server, time_, tmp_path / "device")
    yield qw
    qw.shutdown(carry_open_window=False, timeout=2.0)


def offline_days(qw: Telemetry, server: IngestApp, time_: Time, days: int) -> None:
    server.online = False
    for _ in range(days):
        qw.record("inference.requests", 1, route="local", model="qwen2.5-7b@1.1")
        time_.now += DAY
        assert len(qw.collect()) == 1
        assert not qw.flush()  # offline: kept in the spool
    server.online = True


def test_a_three_day_backlog_is_delivered_over_three_ingest_days_with_nothing_lost(
    device: Telemetry, server: IngestApp, time_: Time
) -> None:
    offline_days(device, server, time_, 3)
    assert device.pending == 3

    time_.now += timedelta(hours=1)  # back online on the ingest's day T0 + 3
    assert not device.flush()  # one window accepted, two kept for the ingest's next day
    assert len(server.stored()) == 1
    assert device.pending == 2
    assert device.dropped()["deferred:budget_exceeded"] == 2

    sent = len(server.requests)
    time_.now += timedelta(hours=22)  # still the ingest's day T0 + 3: nothing is tried
    assert not device.flush()
    assert len(server.requests) == sent

    time_.now += timedelta(hours=2)  # the ingest's day T0 + 4
    assert not device.flush()
    assert len(server.stored()) == 2
    assert device.pending == 1

    time_.now += DAY  # the ingest's day T0 + 5
    assert device.flush()
    assert device.pending == 0

    stored = server.stored()
    assert [e.window_start for e in stored] == [T0, T0 + DAY, T0 + 2 * DAY]
    assert [e.sequence for e in stored] == sorted(e.sequence for e in stored)
    assert device.dropped()["deferred:budget_exceeded"] == 3  # 2 on the first day, 1 next
    assert not_delivered(device) == {}


def test_a_backlog_survives_a_restart_while_it_waits_for_the_ingests_next_day(
    server: IngestApp, time_: Time, tmp_path: Path
) -> None:
    def start() -> Telemetry:
        return pilot_device(server, time_, tmp_path / "device")

    qw = start()
    offline_days(qw, server, time_, 2)
    time_.now += timedelta(hours=1)
    assert not qw.flush()
    qw.shutdown(carry_open_window=False, timeout=1.0)
    assert len(server.stored()) == 1

    restarted = start()  # same day: refused again (uncharged), still kept
    try:
        assert restarted.pending == 1
        assert not restarted.flush()
        time_.now += DAY
        assert restarted.flush()
        assert not_delivered(restarted) == {}
    finally:
        restarted.shutdown(carry_open_window=False, timeout=1.0)
    assert [e.window_start for e in server.stored()] == [T0, T0 + DAY]
