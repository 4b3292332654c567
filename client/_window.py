"""Window arithmetic: windows are aligned to multiples of the window length since the epoch.

`WindowClock` tracks which window is open and, given a time, which windows have ended.
Measurements recorded since the last close belong to the open window; windows that
ended with nothing open in them (the client was asleep, or a simulator jumped ahead)
are still released, all zero, because a missing envelope would itself tell that the
app was idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["Window", "WindowClock", "window_start_of"]

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


class WindowClock:
    """Which window is open, and which have ended by a given time.

    `not_before` lets a restarted client start after the last window it released, so
    two envelopes of one device never cover overlapping time.
    """

    __slots__ = ("_length", "_open_start")

    def __init__(self, seconds: int, now: datetime, not_before: datetime | None = None) -> None:
        self._length = timedelta(seconds=seconds)
        start = window_start_of(now, seconds)
        if not_before is not None and not_before > start:
            start = not_before
        self._open_start = start

    @property
    def open_window(self) -> Window:
        """The window measurements are currently recorded into."""
        return Window(self._open_start, self._end_of(self._open_start))

    def _end_of(self, start: datetime) -> datetime:
        # A start shifted by `not_before` still ends on the aligned boundary.
        aligned = window_start_of(start, int(self._length.total_seconds()))
        return aligned + self._length

    def close_until(self, now: datetime) -> list[Window]:
        """Close every window that ended by `now`, oldest first, and open the next."""
        closed = []
        while (end := self._end_of(self._open_start)) <= now:
            closed.append(Window(self._open_start, end))
            self._open_start = end
        return closed

    def close_open(self, now: datetime) -> Window | None:
        """Close the open window early at `now` (shutdown); None if it has no length."""
        if now <= self._open_start:
            return None
        end = min(now, self._end_of(self._open_start))
        window = Window(self._open_start, end)
        self._open_start = end
        return window
