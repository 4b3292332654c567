"""The budget's clock: real elapsed time, whatever the device's wall clock says.

The privacy ledger's daily cap must hold in real time: moving the wall clock forward
must not open a fresh day's budget. `BudgetClock.read` stamps each charge with three
readings (`ClockReading`): the best estimate of the time of day, the identity of the
clock (the boot, and which clock of it), and that clock's reading. The clock is
`client._realtime.suspend_aware_monotonic`: it counts from boot, keeps counting while
the machine sleeps (`CLOCK_BOOTTIME` on Linux) and no user can move it, so restarting
the app does not reset it and a night's sleep counts as the night it was. Two readings
of one boot are compared by their clock values; readings of different boots by their
wall times, with the ledger refusing a wall clock that runs behind the latest one it
has seen (`client._ledger`).

Charges stamped by earlier releases carry `time.monotonic` readings (on Linux
`CLOCK_MONOTONIC`, which stops in suspend, so it runs behind `CLOCK_BOOTTIME` by every
sleep since boot: compared with it, a charge would look older than it is and free its
budget early). Their clock is tagged with the bare boot identity, the new one with the
boot and the clock's name, so the two are never compared; and every reading also
carries `time.monotonic` (`ClockReading.legacy`), so a charge an earlier release made
in this same boot is still aged on the clock it was stamped with, exactly as before.

The time of day (`now`) follows the wall clock while it agrees with the last server
time learned (the `Date` header of an ingest answer, advanced by the real-time clock,
sleep included); when they disagree by more than `tolerance`, the server's time wins.
So once the device has heard from its ingest, a window is neither closed nor stamped
ahead of the ingest's clock, and nothing leaves that the ingest's skew rule would
refuse.

A simulator in manual mode passes no monotonic clock: its own clock is real time there
(`read(at)` then stamps the simulated time itself).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from client._realtime import REAL_CLOCK, suspend_aware_monotonic

__all__ = ["PROBE_INTERVAL", "BudgetClock", "ClockReading", "boot_id", "real_clock_id"]

PROBE_INTERVAL = 300.0
"""Seconds between two requests for the ingest's time while it is unknown."""

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
_PROCESS_BOOT = f"process-{uuid.uuid4()}"
_SIMULATED = "simulated"


def boot_id() -> str:
    """The identity of this boot (Linux), or of this process where the OS has none.

    A per-process identity is the conservative fallback: readings of two processes are
    then compared by wall time, under the ledger's wall-clock rules.
    """
    try:
        return "boot-" + _BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        return _PROCESS_BOOT


def real_clock_id() -> str:
    """The identity of `suspend_aware_monotonic` in this boot: the boot and the clock's
    name (never equal to `boot_id()`, which names `time.monotonic`'s readings)."""
    return f"{boot_id()}/{REAL_CLOCK}"


@dataclass(frozen=True, slots=True)
class ClockReading:
    """One instant, as the ledger stamps a charge with it."""

    wall: float
    """Seconds since the epoch: the device's best estimate of the time of day."""
    boot: str
    """Which monotonic clock `mono` is read on (one boot, or the simulator's clock)."""
    mono: float
    """Seconds on that monotonic clock."""
    legacy: tuple[str, float] | None = None
    """The same instant on the clock earlier releases stamped charges with (its
    identity, `boot_id()`, and `time.monotonic()`), to age their charges of this boot;
    never stored with a charge."""

    def seconds_since(self, earlier: ClockReading) -> float | None:
        """Real seconds from `earlier` to this reading, if a monotonic clock knows it."""
        if earlier.boot == self.boot:
            return self.mono - earlier.mono
        if self.legacy is not None and earlier.boot == self.legacy[0]:
            return self.legacy[1] - earlier.mono
        return None


class BudgetClock:
    """Time for the budget and for windows: see the module docstring. Thread-safe."""

    def __init__(
        self,
        wall: Callable[[], datetime],
        monotonic: Callable[[], float] | None = suspend_aware_monotonic,
        *,
        boot: str | None = None,
        legacy: tuple[str, Callable[[], float]] | None = None,
        tolerance: timedelta = timedelta(seconds=60),
        server_time: Callable[[], tuple[datetime, float] | None] | None = None,
    ) -> None:
        """`boot` names the `monotonic` clock (default: `real_clock_id()` for
        `suspend_aware_monotonic`, `boot_id()` for `time.monotonic`, else
        "configured"); `legacy` the clock of earlier releases' charges and its reader,
        read with every reading (default: `time.monotonic` of this boot, for
        `suspend_aware_monotonic`). `server_time` (a transport's) is asked for the
        ingest's latest time on every `now()`. Its monotonic readings are
        `suspend_aware_monotonic`'s: with another monotonic clock a new server time is
        dated by this clock when first seen (later than the request, so the estimate
        errs behind the ingest's clock, never ahead)."""
        self._wall = wall
        self._monotonic = monotonic
        self._server_source = server_time if monotonic is not None else None
        self._last_learned: tuple[datetime, float] | None = None
        if boot is None and monotonic is suspend_aware_monotonic:
            boot = real_clock_id()
            legacy = legacy or (boot_id(), time.monotonic)
        elif boot is None:
            boot = boot_id() if monotonic is time.monotonic else "configured"
        self._boot = boot
        self._legacy = legacy
        self._tolerance = tolerance.total_seconds()
        self._server: tuple[float, float] | None = None
        self._probed: float | None = None
        self._lock = threading.Lock()

    def learn_server_time(self, server_time: datetime, sent_at_monotonic: float) -> None:
        """Record the ingest's time (`Date` of an answer to a request sent at
        `sent_at_monotonic`). The request's start is used, so the estimate never runs
        ahead of the ingest's clock by more than the header's one-second resolution."""
        if self._monotonic is None or server_time.tzinfo is None:
            return
        with self._lock:
            self._server = (server_time.timestamp(), sent_at_monotonic)

    def follows_ingest(self) -> bool:
        """Whether this clock uses the ingest's time (not a simulator's own clock)."""
        return self._server_source is not None

    def wants_ingest_time(self) -> bool:
        """True if the ingest's time is unknown and was last asked for over
        `PROBE_INTERVAL` seconds ago (asking is the caller's I/O, off the app's thread)."""
        if self._server_source is None or self._monotonic is None:
            return False
        if self._pull_server_time():
            return False
        now = self._monotonic()
        with self._lock:
            if self._probed is not None and now - self._probed < PROBE_INTERVAL:
                return False
            self._probed = now
            return True

    def _pull_server_time(self) -> bool:
        """Take the transport's latest server time, if new; True if one is known."""
        if self._server_source is None or self._monotonic is None:
            return False
        learned = self._server_source()
        if learned is None:
            return False
        if learned != self._last_learned:
            self._last_learned = learned
            own = self._monotonic is suspend_aware_monotonic
            sent = learned[1] if own else self._monotonic()
            self.learn_server_time(learned[0], sent)
        return True

    def monotonic(self) -> float | None:
        """The monotonic reading now (None for a simulator's clock)."""
        return self._monotonic() if self._monotonic is not None else None

    def _estimate(self) -> float | None:
        """The ingest's time now (Unix seconds), if it was ever learned."""
        if self._monotonic is None:
            return None
        self._pull_server_time()
        with self._lock:
            server = self._server
        if server is None:
            return None
        return server[0] + (self._monotonic() - server[1])

    def ingest_now(self) -> datetime | None:
        """The ingest's time now (its last `Date`, advanced by the real-time clock);
        None until the device has heard from its ingest, and for a simulator's clock."""
        estimate = self._estimate()
        return None if estimate is None else datetime.fromtimestamp(estimate, UTC)

    def now(self) -> datetime:
        """The time of day: the wall clock, unless it strays from the ingest's time."""
        wall = self._wall()
        estimate = self._estimate()
        if estimate is None or abs(wall.timestamp() - estimate) <= self._tolerance:
            return wall
        return datetime.fromtimestamp(estimate, UTC)

    def read(self, at: datetime | None = None) -> ClockReading:
        """A reading for a charge made now (`at`: the caller's time, for a simulator)."""
        if self._monotonic is None:
            when = at if at is not None else self._wall()
            return ClockReading(when.timestamp(), _SIMULATED, when.timestamp())
        legacy = None if self._legacy is None else (self._legacy[0], self._legacy[1]())
        return ClockReading(self.now().timestamp(), self._boot, self._monotonic(), legacy)
