"""Which windows an envelope may cover: inside one aligned window of its policy.

The client's windows are aligned to multiples of the policy's `window_seconds` since
the epoch (`client._window`): a full window is exactly one aligned window. A window is
shorter only at the edges of a run: cut at shutdown (`close_open`: it ends early) or
resumed after a restart inside an aligned window (`not_before`: it starts late). So
every window an honest client sends lies inside one aligned policy window, and its
Prio3 reports belong to that window's batch. Anything else (a window of another
length, or straddling two aligned windows) is refused: it would split or merge the
policy's windows, and with them the per-window privacy charge. Pure logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas import report_batch_start

__all__ = ["AlignedWindow", "aligned_window"]


@dataclass(frozen=True, slots=True)
class AlignedWindow:
    """The aligned policy window [start, end) an envelope's window lies in."""

    start: datetime
    end: datetime


def aligned_window(start: datetime, end: datetime, seconds: int) -> AlignedWindow | str:
    """The aligned `seconds`-long window holding [start, end), or why there is none."""
    try:
        aligned = report_batch_start(start, seconds)
        aligned_end = aligned + timedelta(seconds=seconds)
    except OverflowError:
        return "the window is at the edge of the calendar"
    if end > aligned_end:
        return (
            f"the window [{start.isoformat()}, {end.isoformat()}) is not inside one aligned "
            f"{seconds} s policy window (it starts in [{aligned.isoformat()}, "
            f"{aligned_end.isoformat()}))"
        )
    return AlignedWindow(aligned, aligned_end)
