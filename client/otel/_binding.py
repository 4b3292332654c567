"""How one OpenTelemetry instrument reaches its policy signal: the client instrument,
the attribute translation and the unit factor, resolved per attribute set.

A binding turns an attribute set into a handle (`client.otel._handles`) and says
whether the handle may be cached: sets with an unhashable value or over the size
bounds are resolved on every call (the latter refused and counted every time).
Up-down counters and gauges keep their current value per cell (`Level`), which the
window-close poll records into the signal's histogram.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Generic, TypeVar

from client._drops import DropCounter, DropReason
from client._instruments import Counter, Histogram
from client.otel._attributes import AttributeMap, oversized
from client.otel._handles import (
    AddHandle,
    CountingAdd,
    CountingLevel,
    CountingRecord,
    Level,
    LevelHandle,
    RecordHandle,
    RefusedAdd,
    RefusedRecord,
    ScaledAdd,
    ScaledRecord,
)

__all__ = ["CounterBinding", "HistogramBinding", "LevelBinding", "RefusedBinding"]

_H = TypeVar("_H")


class RefusedBinding(Generic[_H]):
    """An instrument the policy does not map: every attribute set gets the one refusing
    handle, which drops and counts each measurement."""

    __slots__ = ("_handle",)

    def __init__(self, handle: _H) -> None:
        self._handle = handle

    def handle(self, attributes: Mapping[str, object] | None) -> tuple[_H, bool]:
        return self._handle, True


class CounterBinding:
    """An OpenTelemetry counter (or observable counter) into a counter signal."""

    __slots__ = ("_attributes", "_counter", "_drops", "_factor")

    def __init__(
        self, counter: Counter, attributes: AttributeMap, factor: int, drops: DropCounter
    ) -> None:
        self._counter = counter
        self._attributes = attributes
        self._factor = factor
        self._drops = drops

    def handle(self, attributes: Mapping[str, object] | None) -> tuple[AddHandle, bool]:
        """The handle of an attribute set, and whether it may be cached."""
        if oversized(attributes):
            return RefusedAdd(self._drops, DropReason.ATTRIBUTES_TOO_LARGE), False
        labels, undeclared = self._attributes.translate(attributes)
        handle: AddHandle = self._counter.bind(**labels)
        if self._factor != 1:
            handle = ScaledAdd(handle, self._factor)
        if undeclared:
            handle = CountingAdd(handle, self._drops, undeclared)
        return handle, True


class HistogramBinding:
    """An OpenTelemetry histogram (or observable gauge/up-down counter observations)
    into a histogram signal."""

    __slots__ = ("_attributes", "_drops", "_factor", "_histogram")

    def __init__(
        self, histogram: Histogram, attributes: AttributeMap, factor: float, drops: DropCounter
    ) -> None:
        self._histogram = histogram
        self._attributes = attributes
        self._factor = factor
        self._drops = drops

    def handle(self, attributes: Mapping[str, object] | None) -> tuple[RecordHandle, bool]:
        """The handle of an attribute set, and whether it may be cached."""
        if oversized(attributes):
            return RefusedRecord(self._drops, DropReason.ATTRIBUTES_TOO_LARGE), False
        labels, undeclared = self._attributes.translate(attributes)
        handle: RecordHandle = self._histogram.bind(**labels)
        if self._factor != 1.0:
            handle = ScaledRecord(handle, self._factor)
        if undeclared:
            handle = CountingRecord(handle, self._drops, undeclared)
        return handle, True


class LevelBinding:
    """An up-down counter's or gauge's current value per cell, recorded into a
    histogram signal once per window (`sample`, at window close)."""

    __slots__ = ("_attributes", "_drops", "_factor", "_histogram", "_levels", "_lock")

    def __init__(
        self, histogram: Histogram, attributes: AttributeMap, factor: float, drops: DropCounter
    ) -> None:
        self._histogram = histogram
        self._attributes = attributes
        self._factor = factor
        self._drops = drops
        self._levels: dict[tuple[tuple[str, str], ...], Level] = {}
        self._lock = threading.Lock()

    def handle(self, attributes: Mapping[str, object] | None) -> tuple[LevelHandle, bool]:
        """The level of an attribute set's cell, and whether it may be cached."""
        if oversized(attributes):
            return RefusedRecord(self._drops, DropReason.ATTRIBUTES_TOO_LARGE), False
        labels, undeclared = self._attributes.translate(attributes)
        cell = self._attributes.cell_labels(labels)
        with self._lock:  # one level per cell, however many threads resolve it at once
            level = self._levels.get(cell)
            if level is None:
                level = self._levels[cell] = Level(self._drops)
        if undeclared:
            return CountingLevel(level, self._drops, undeclared), True
        return level, True

    def sample(self) -> None:
        """Record every cell's current value (those ever set) as one event each."""
        with self._lock:
            levels = list(self._levels.items())
        for cell, level in levels:
            value = level.read()
            if value is not None:
                self._histogram.record(value * self._factor, **dict(cell))

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        for level in self._levels.values():
            level.reset_after_fork()
