"""Sequence numbers keep increasing when the state directory does not survive.

The ingest admits a device's envelopes only above the last sequence number it accepted
from that device (`sequence_not_increasing`), and a device's id can outlive its state
directory (a TPM device's id is its endorsement key's) or see it come back older (a
backup restored). Numbers are never below the envelope's `sent_at` in microseconds
since the epoch (`client._envelope.sequence_floor`), so such a device is not refused
for days.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from client._envelope import DeviceState, sequence_floor
from tests.client.ingest_app import T0, IngestApp, Time, not_delivered, pilot_device

_END = datetime(2026, 3, 2, 12, tzinfo=UTC)


def test_a_fresh_state_directory_numbers_from_the_clock() -> None:
    assert sequence_floor(T0.timestamp()) == int(T0.timestamp()) * 1_000_000
    assert sequence_floor(-5.0) == 0  # a clock before the epoch
    assert sequence_floor(datetime(9999, 12, 31, tzinfo=UTC).timestamp()) < 2**63


def test_numbers_increase_by_one_within_an_instant_and_jump_with_the_clock(
    tmp_path: Path,
) -> None:
    state = DeviceState(tmp_path)
    first = state.next_sequence(_END, at=T0)
    assert first == sequence_floor(T0.timestamp())
    assert state.next_sequence(_END, at=T0) == first + 1
    later = T0 + timedelta(hours=1)
    assert state.next_sequence(_END, at=later) == sequence_floor(later.timestamp())


def test_a_clock_set_back_still_gets_a_higher_number(tmp_path: Path) -> None:
    state = DeviceState(tmp_path)
    last = state.next_sequence(_END, at=T0)
    earlier = T0 - timedelta(days=30)
    assert state.next_sequence(_END, at=earlier) == last + 1
    # And in a new process on the same directory.
    assert DeviceState(tmp_path).next_sequence(_END, at=earlier) == last + 2


def test_a_directory_made_again_later_numbers_above_the_old_one(tmp_path: Path) -> None:
    old = DeviceState(tmp_path / "old")
    numbers = [old.next_sequence(_END, at=T0) for _ in range(1000)]
    fresh = DeviceState(tmp_path / "new")
    assert fresh.next_sequence(_END, at=T0 + timedelta(minutes=1)) > numbers[-1]


def test_without_a_time_the_system_clock_is_the_floor(tmp_path: Path) -> None:
    before = sequence_floor(time.time())
    assert DeviceState(tmp_path).next_sequence(_END) >= before


def test_a_device_restored_from_a_backup_is_not_refused_by_the_real_ingest(
    server: IngestApp, time_: Time, tmp_path: Path
) -> None:
    """A state directory restored from a backup (its key, ledger and sequence of then)
    sends again at once: before, each envelope was `sequence_not_increasing` until the
    device had numbered as many windows again as it had since the backup."""
    state_dir, backup = tmp_path / "device", tmp_path / "backup"

    def one_day(qw_days: int, state: Path) -> None:
        qw = pilot_device(server, time_, state)
        try:
            for _ in range(qw_days):
                qw.record("inference.requests", 1, route="local", model="qwen2.5-7b@1.1")
                time_.now += timedelta(days=1)
                assert len(qw.collect()) == 1
                assert qw.flush()
            assert not_delivered(qw) == {}
        finally:
            qw.shutdown(carry_open_window=False, timeout=2.0)

    one_day(1, state_dir)
    shutil.copytree(state_dir, backup)
    one_day(3, state_dir)
    assert len(server.stored()) == 4
    shutil.rmtree(state_dir)
    shutil.copytree(backup, state_dir)  # the backup of three days ago comes back
    one_day(2, state_dir)
    stored = server.stored()
    assert len(stored) == 6
    assert len({e.device_id for e in stored}) == 1  # the same device throughout
    assert [e.sequence for e in stored] == sorted({e.sequence for e in stored})
    # Each number is its envelope's sent_at in microseconds: it says nothing more.
    assert all(e.sequence == sequence_floor(e.sent_at.timestamp()) for e in stored)
