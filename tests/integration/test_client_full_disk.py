"""The client on a real full filesystem (a 1 MiB tmpfs): nothing raises into the app,
every loss is counted, and once there is room again nothing else is lost, across a
restart too.

Mounting needs root (CI runs as root on this kind of machine); elsewhere the test is
skipped with the reason. `tests/client/test_full_disk.py` covers each failure alone.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas import Tier
from tests.client.conftest import FakeClock, MemoryIngest, new_telemetry


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    """Write `path` until the filesystem is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_disk_loses_only_what_it_must_and_counts_it(small_disk: Path) -> None:
    ingest, clock = MemoryIngest(), FakeClock()
    state = small_disk / "state"
    telemetry = new_telemetry(ingest, clock, state)
    for tier in (Tier.HEALTH, Tier.PERFORMANCE):
        telemetry.grant_consent(tier)
    requests = telemetry.counter("inference.requests")
    requests.add(3, route="local", model="a@1")
    _fill(small_disk / "filler")
    # Two days of windows close on the full disk: the ledger's journal fills up too.
    assert telemetry.collect(clock.advance(hours=48)) == []  # and nothing is raised
    dropped = telemetry.dropped()
    assert dropped["state_write_failed"] == 48
    assert dropped.get("ledger_failed", 0) > 0
    assert ingest.envelopes == []

    (small_disk / "filler").unlink()
    requests.add(2, route="local", model="a@1")
    (sent,) = telemetry.collect(clock.advance(hours=1))
    assert telemetry.flush()
    assert [e.envelope_id for e in ingest.envelopes] == [sent.envelope_id]
    assert telemetry.dropped() == dropped  # nothing more lost
    telemetry.shutdown(carry_open_window=False)

    # The ledger did not take a half-written line for damage: a restart releases.
    again = new_telemetry(ingest, clock, state)
    assert again.ledger_problem() is None
    again.counter("inference.requests").add(1, route="local", model="a@1")
    (later,) = again.collect(clock.advance(hours=1))
    assert later.sequence > sent.sequence
    assert again.flush()
    assert again.dropped() == {}
    again.shutdown(carry_open_window=False)
