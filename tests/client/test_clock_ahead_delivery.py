"""Nothing leaves the device that the ingest's skew rule would refuse, and nothing it
refuses for the time is lost.

Envelopes built offline with the device's wall clock ahead, before the device first
heard from its ingest, end ahead of the ingest's clock: they are held in the spool
(not sent, not deleted) until the ingest's time catches up, or deleted, counted, when
their wait would outlast their retention. An envelope the ingest refused anyway
(`clock_skew`) is kept and sent again later. The real ingest app, over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from client import Telemetry
from tests.client.ingest_app import T0, IngestApp, Time, not_delivered, pilot_device

DAY = timedelta(days=1)
SKEW = timedelta(minutes=5)  # the ingest's rule (ingest._verify)


@pytest.fixture
def time_() -> Time:
    moved = Time()
    moved.ahead = 2 * DAY  # the device's wall clock runs two days ahead
    return moved


@pytest.fixture
def device(server: IngestApp, time_: Time, tmp_path: Path) -> Iterator[Telemetry]:
    server.online = False  # it has never heard from its ingest
    qw = pilot_device(server, time_, tmp_path / "device")
    yield qw
    qw.shutdown(carry_open_window=False, timeout=1.0)


def _build_offline(qw: Telemetry, time_: Time) -> None:
    """One window, closed by the device's wall clock while offline."""
    qw.record("inference.requests", 1, route="local", model="qwen2.5-7b@1.1")
    time_.now += DAY
    (envelope,) = qw.collect()
    assert envelope.window_end == time_.device() > time_.ingest() + SKEW
    assert not qw.flush()


def _posts(server: IngestApp) -> int:
    return server.requests.count("POST /v1/envelopes")


def test_an_envelope_built_ahead_of_the_ingest_is_held_until_the_ingest_catches_up(
    device: Telemetry, server: IngestApp, time_: Time
) -> None:
    _build_offline(device, time_)
    server.online = True
    assert not device.flush()  # it asks for the ingest's time, then sends nothing
    assert server.requests == ["HEAD /"]
    assert device.pending == 1
    assert device.dropped()["held:clock_ahead"] == 1

    time_.now += DAY + timedelta(hours=12)  # still ahead: still held, counted once
    assert not device.flush()
    assert _posts(server) == 0
    assert device.dropped()["held:clock_ahead"] == 1

    time_.now += timedelta(hours=12)  # the ingest's clock reaches the window's end
    assert device.flush()
    (stored,) = server.stored()
    assert stored.window_end <= time_.ingest() + SKEW
    assert stored.window_end - SKEW <= stored.sent_at <= time_.ingest() + SKEW
    assert not_delivered(device) == {}


def test_an_envelope_the_ingest_refuses_as_ahead_is_kept_and_sent_later(
    device: Telemetry, server: IngestApp, time_: Time
) -> None:
    _build_offline(device, time_)
    server.online = True
    server.head_fails = True  # the device cannot learn the time first: it sends
    assert not device.flush()
    assert _posts(server) == 1
    assert server.stored() == []
    assert device.pending == 1
    assert device.dropped()["deferred:clock_skew"] == 1

    # The refusal's Date taught the device the ingest's time: it sends nothing ahead.
    time_.now += DAY
    assert not device.flush()
    assert _posts(server) == 1

    time_.now += DAY
    assert device.flush()
    assert len(server.stored()) == 1
    assert not_delivered(device) == {}


def test_an_envelope_ahead_for_longer_than_its_retention_expires_counted(
    server: IngestApp, time_: Time, tmp_path: Path
) -> None:
    # Performance data is kept 90 days, health data 395 (policies/pilot.yaml): a wall
    # clock 100 days ahead loses the performance part, one 400 days ahead the envelope.
    for ahead, left in ((100, {"health"}), (400, None)):
        time_.now = T0
        time_.ahead = timedelta(days=ahead)
        server.online = False
        qw = pilot_device(server, time_, tmp_path / f"ahead-{ahead}")
        try:
            _build_offline(qw, time_)
            server.online = True
            # Held (True: nothing left), the tiers it could not deliver in time gone.
            assert qw.flush() is (left is None)
            if left is None:
                assert qw.pending == 0
                assert qw.dropped()["expired:clock_ahead"] == 1
            else:
                assert qw.pending == 1
                assert "expired:clock_ahead" not in qw.dropped()
                time_.now += timedelta(days=ahead)
                assert qw.flush()
                stored = server.stored()[-1]
                assert {a.tier.value for a in stored.aggregates} == left
        finally:
            qw.shutdown(carry_open_window=False, timeout=1.0)
