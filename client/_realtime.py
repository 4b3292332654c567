"""Real elapsed time: a clock that counts from boot and keeps counting while asleep.

The privacy ledger's "last 24 real hours" and the budget clock's estimate of the
ingest's time (`client._clock`) measure elapsed real time. They need a clock that

* nobody can set (unlike the wall clock),
* counts from boot, so that restarting the app does not reset it and two readings of
  one boot compare (the boot's identity tells readings of different boots apart), and
* keeps counting while the machine is suspended: a laptop that sleeps overnight has
  lived a real night. A clock that stops in suspend makes the ledger believe less
  than 24 hours passed since yesterday's release, so the whole day's release is
  suppressed, and it leaves the budget clock's time of day behind by the sleep.

`time.monotonic` is not that clock everywhere: on Linux it is `CLOCK_MONOTONIC` and
on macOS `mach_absolute_time`, and both stop while the machine sleeps. So:

* Linux: `CLOCK_BOOTTIME`, which is `CLOCK_MONOTONIC` plus the time spent suspended
  (Linux 2.6.39 and later).
* macOS: `clock_gettime(CLOCK_MONOTONIC)`, which there (unlike `time.monotonic`)
  continues to increment while the system is asleep (`mach_continuous_time`).
* Windows: `time.monotonic` (`GetTickCount64`, `QueryPerformanceCounter` from
  Python 3.13), which counts through sleep.
* Elsewhere: `time.monotonic`. If it stops in suspend there, real time is
  underestimated: releases are held or suppressed, never given extra budget.

Every clock here only undercounts real time if it errs at all; none runs fast, which
is the direction that would open budget early.
"""

from __future__ import annotations

import sys
import time

__all__ = ["REAL_CLOCK", "suspend_aware_monotonic"]

REAL_CLOCK: str
"""The name of the clock `suspend_aware_monotonic` reads on this platform."""

if sys.platform == "linux":
    REAL_CLOCK = "boottime"

    def _read() -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

elif sys.platform == "darwin":
    REAL_CLOCK = "monotonic-continuous"

    def _read() -> float:
        return time.clock_gettime(time.CLOCK_MONOTONIC)

else:
    REAL_CLOCK = "monotonic"
    _read = time.monotonic


def suspend_aware_monotonic() -> float:
    """Seconds since boot, counting time suspended: see the module docstring."""
    return _read()
