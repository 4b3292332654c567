"""Which window an envelope may cover: exactly one aligned window of its policy.

The client's windows are aligned to multiples of the policy's `window_seconds` since
the epoch (`client._window`), and it releases whole windows only: a window cut short
at shutdown is carried to the next run and released whole, late if need be. So every
window an honest client sends is exactly one aligned policy window, and its Prio3
reports belong to that window's batch. Anything else (a window of another length,
one that starts or ends off the policy's boundaries, or one that straddles two) is
refused: it would split or merge the policy's windows, and with them the per-window
privacy charge. In particular a device cannot cut one policy window into several
shorter ones, each a full bounded release, to weigh several times in that window's
fleet figures: with whole windows only, a second envelope for a window overlaps the
first, which the device ledger refuses (`ingest._admission`). Pure logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas import report_batch_start

__all__ = ["AlignedWindow", "aligned_window"]


@dataclass(frozen=True, slots=True)
class AlignedWindow:
    """The aligned policy window [start, end) an envelope covers."""

    start: datetime
    end: datetime


def aligned_window(start: datetime, end: datetime, seconds: int) -> AlignedWindow | str:
    """[start, end) as an aligned `seconds`-long window, or why it is not one."""
    try:
        aligned = report_batch_start(start, seconds)
        aligned_end = aligned + timedelta(seconds=seconds)
    except OverflowError:
        return "the window is at the edge of the calendar"
    if start != aligned or end != aligned_end:
        return (
            f"the window [{start.isoformat()}, {end.isoformat()}) is not one aligned "
            f"{seconds} s policy window (the one it starts in is [{aligned.isoformat()}, "
            f"{aligned_end.isoformat()}))"
        )
    return AlignedWindow(aligned, aligned_end)
