"""Per-window aggregation cells: a value and a small lock each.

As in opentelemetry-python's SDK, a cell is created once (double-checked locking on
the table) and, in steady state, the only lock a measurement takes is its own cell's.
Closing a window takes each cell's lock, reads its value and resets it in one step, so
every measurement lands in exactly one window, even while other threads record.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = [
    "CounterCell",
    "CounterTable",
    "HistogramCell",
    "HistogramSnapshot",
    "HistogramTable",
]


class CounterCell:
    """One counter cell: an integer and its lock."""

    __slots__ = ("lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0

    def take(self) -> int:
        """Read and reset the value atomically (window close)."""
        with self.lock:
            value, self.value = self.value, 0
        return value


class HistogramCell:
    """One histogram cell: bucket counts, a sum of clamped values, and their lock."""

    __slots__ = ("counts", "lock", "total")

    def __init__(self, n_buckets: int) -> None:
        self.lock = threading.Lock()
        self.counts = [0] * n_buckets
        self.total = 0.0

    def take(self) -> tuple[list[int], float]:
        """Read and reset counts and sum atomically (window close)."""
        fresh = [0] * len(self.counts)
        with self.lock:
            counts, self.counts = self.counts, fresh
            total, self.total = self.total, 0.0
        return counts, total


class CounterTable:
    """The cells of one counter signal, indexed by `CellDomain` index."""

    __slots__ = ("_cells", "_lock")

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._cells: list[CounterCell | None] = [None] * size

    def cell(self, index: int) -> CounterCell:
        """The cell at `index`, created on first use."""
        cell = self._cells[index]
        if cell is None:
            with self._lock:
                cell = self._cells[index]
                if cell is None:
                    cell = self._cells[index] = CounterCell()
        return cell

    def take(self) -> list[int]:
        """Every cell's value (zeros for cells never used), resetting them."""
        return [0 if c is None else c.take() for c in self._cells]

    def add(self, values: list[int]) -> None:
        """Add `values` (one per cell) into the cells: carried over from a restart."""
        for index, value in enumerate(values):
            if value:
                cell = self.cell(index)
                with cell.lock:
                    cell.value += value

    def reset_locks_after_fork(self) -> None:
        """Fresh locks in a forked child: a thread of the parent may have held one."""
        self._lock = threading.Lock()
        for c in self._cells:
            if c is not None:
                c.lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """One histogram cell's content at window close."""

    counts: list[int]
    total: float


class HistogramTable:
    """The cells of one histogram signal, indexed by `CellDomain` index."""

    __slots__ = ("_cells", "_lock", "_n_buckets")

    def __init__(self, size: int, n_buckets: int) -> None:
        self._lock = threading.Lock()
        self._n_buckets = n_buckets
        self._cells: list[HistogramCell | None] = [None] * size

    def cell(self, index: int) -> HistogramCell:
        """The cell at `index`, created on first use."""
        cell = self._cells[index]
        if cell is None:
            with self._lock:
                cell = self._cells[index]
                if cell is None:
                    cell = self._cells[index] = HistogramCell(self._n_buckets)
        return cell

    def add(self, snapshots: list[HistogramSnapshot]) -> None:
        """Add `snapshots` (one per cell) into the cells: carried over from a restart."""
        for index, snap in enumerate(snapshots):
            if any(snap.counts):
                cell = self.cell(index)
                with cell.lock:
                    cell.counts = [a + b for a, b in zip(cell.counts, snap.counts, strict=True)]
                    cell.total += snap.total

    def take(self) -> list[HistogramSnapshot]:
        """Every cell's content (empty for cells never used), resetting them."""
        out = []
        for c in self._cells:
            if c is None:
                out.append(HistogramSnapshot([0] * self._n_buckets, 0.0))
            else:
                counts, total = c.take()
                out.append(HistogramSnapshot(counts, total))
        return out

    def reset_locks_after_fork(self) -> None:
        """Fresh locks in a forked child: a thread of the parent may have held one."""
        self._lock = threading.Lock()
        for c in self._cells:
            if c is not None:
                c.lock = threading.Lock()
