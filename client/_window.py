"""Window arithmetic: windows are aligned to multiples of the window length since the epoch.

`WindowClock` tracks which window is open and, given a time, which windows have ended.
Every window is exactly one aligned policy window, `[k * seconds, (k + 1) * seconds)`
since the epoch, as the ingest requires: a device contributes at most one release per
aligned window. Nothing here cuts a window short; what is open at shutdown is carried
to the next run whole (`client._carry`). Measurements recorded since the last close
belong to the open window; windows that ended with nothing open in them (the client was
asleep, or a simulator jumped ahead) are still released, all zero, because a missing
envelope would itself tell that the app was idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Window", "WindowClock", "aligned_window", "window_start_of"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open interval [start, end)."""

    start: datetime
    end: datetime


def window_start_of(t: datetime, seconds: int) -> datetime:
    """Start of the aligned window that contains `t` (aware datetime)."""
    elapsed = (t - _EPOCH) // timedelta(seconds=seconds)
    return _EPOCH + timedelta(seconds=seconds * elapsed)


def aligned_window(t: datetime, seconds: int) -> Window:
    """The aligned `seconds`-long window that contains `t`."""
    start = window_start_of(t, seconds)
    return Window(start, start + timedelta(seconds=seconds))


class WindowClock:
    """Which aligned window is open, and which have ended by a given time.

    It opens the aligned window that contains `now`, whatever an earlier run released:
    a restart within a window continues that window (its carried cells are added back,
    `client._carry`), never a sub-window of it.
    """

    __slots__ = ("_length", "_open_start")

    def __init__(self, seconds: int, now: datetime) -> None:
        self._length = timedelta(seconds=seconds)
        self._open_start = window_start_of(now, seconds)

    @property
    def open_window(self) -> Window:
        """The window measurements are currently recorded into."""
        return Window(self._open_start, self._open_start + self._length)

    def close_until(self, now: datetime) -> list[Window]:
        """Close every window that ended by `now`, oldest first, and open the next."""
        closed = []
        while (end := self._open_start + self._length) <= now:
            closed.append(Window(self._open_start, end))
            self._open_start = end
        return closed
