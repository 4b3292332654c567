"""The on-disk spool: pending envelopes survive restarts, encrypted, and expire by tier."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from client import MemoryTransport, TransportError
from client._drops import DropCounter
from client._spool import Spool
from schemas import BatchResult, EnvelopeBatch, Tier
from tests.client.conftest import FakeClock, MakeTelemetry, MemoryIngest


def _offline(batch: EnvelopeBatch) -> BatchResult:
    raise TransportError("offline")


def test_pending_envelopes_survive_a_restart_while_offline(
    make_telemetry: MakeTelemetry, clock: FakeClock, ingest: MemoryIngest, tmp_path: Path
) -> None:
    state = tmp_path / "device"
    first = make_telemetry(transport=MemoryTransport(_offline), state_dir=state, max_attempts=1)
    first.counter("app.starts").add(2)
    sent = first.collect(clock.advance(hours=3))
    assert not first.flush()
    first.shutdown(carry_open_window=False, timeout=0.1)
    assert first.dropped() == {}  # kept on disk, not dropped

    second = make_telemetry(state_dir=state)  # online now
    assert second.pending == 3
    assert second.flush()
    assert [e.envelope_id for e in ingest.envelopes] == [e.envelope_id for e in sent]
    assert second.pending == 0
    assert not list((state / "spool").glob("*.env"))


def test_the_spool_is_encrypted_at_rest(
    make_telemetry: MakeTelemetry, clock: FakeClock, tmp_path: Path
) -> None:
    state = tmp_path / "device"
    qw = make_telemetry(transport=MemoryTransport(_offline), state_dir=state, max_attempts=1)
    qw.collect(clock.advance(hours=1))
    (path,) = (state / "spool").glob("*.env")
    raw = path.read_bytes()
    for plain in (b"inference.requests", b"app.starts", b"performance", qw.device_id.encode()):
        assert plain not in raw
    assert oct((state / "spool.key").stat().st_mode & 0o777) == "0o600"


def test_an_unreadable_spool_file_is_counted_and_removed(
    make_telemetry: MakeTelemetry, clock: FakeClock, tmp_path: Path
) -> None:
    state = tmp_path / "device"
    qw = make_telemetry(transport=MemoryTransport(_offline), state_dir=state, max_attempts=1)
    qw.collect(clock.advance(hours=1))
    qw.shutdown(carry_open_window=False, timeout=0.1)
    (path,) = (state / "spool").glob("*.env")
    path.write_bytes(b"garbage")
    drops = DropCounter()
    spool = Spool(state, 10, drops)
    assert len(spool) == 0
    assert drops.snapshot() == {"spool_corrupt": 1}
    assert not path.exists()


def test_content_expires_from_the_spool_after_its_retention(
    make_telemetry: MakeTelemetry, clock: FakeClock, tmp_path: Path
) -> None:
    state = tmp_path / "device"
    qw = make_telemetry(transport=MemoryTransport(_offline), state_dir=state, max_attempts=1)
    (envelope,) = qw.collect(clock.advance(hours=1))
    assert {a.tier for a in envelope.aggregates} == {Tier.HEALTH, Tier.PERFORMANCE}
    qw.shutdown(carry_open_window=False, timeout=0.1)

    drops = DropCounter()
    spool = Spool(state, 10, drops)
    days = {Tier.HEALTH: 30, Tier.PERFORMANCE: 2, Tier.CONTENT: 1}
    assert spool.expire(clock.now + timedelta(days=1), days.__getitem__) == 0
    assert spool.expire(clock.now + timedelta(days=3), days.__getitem__) == 1
    (kept,) = spool.take()
    assert {a.tier for a in kept.aggregates} == {Tier.HEALTH}
    spool.put_back([kept])
    # Past every tier's retention the envelope is dropped, and counted.
    assert spool.expire(clock.now + timedelta(days=31), days.__getitem__) == 1
    assert len(spool) == 0
    assert drops.snapshot() == {"expired": 1}
    assert Spool(state, 10, DropCounter()).waiting == 0  # and gone from disk


def test_opening_a_spool_removes_only_stale_temporary_files(tmp_path: Path) -> None:
    """Review s18b H6: another `Spool` on the directory may be half-way through a write
    (its `*.tmp` not yet renamed): a second one opened meanwhile leaves it alone, and
    removes only a temporary file old enough to be a crashed write."""
    Spool(tmp_path, 10, DropCounter())
    live = tmp_path / "spool" / "00000000000000000001-x.env.tmp"
    stale = tmp_path / "spool" / "00000000000000000002-y.env.tmp"
    live.write_bytes(b"half written")
    stale.write_bytes(b"cut short")
    old = time.time() - 86400.0  # a day old
    os.utime(stale, (old, old))
    drops = DropCounter()
    spool = Spool(tmp_path, 10, drops)
    assert len(spool) == 0
    assert drops.snapshot() == {}
    assert live.exists()
    assert not stale.exists()
