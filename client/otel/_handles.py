"""What an OpenTelemetry measurement lands in, once its attribute set is resolved.

Each synchronous instrument caches one handle per attribute set; a handle is chosen
once, when the set is first seen, so the hot path never branches on the mapping: the
client's own bound handle when nothing needs doing, a scaling wrapper for a declared
unit conversion, a counting wrapper for a set with undeclared attributes, a refusing
handle for an oversized set. Up-down counters and gauges keep a `Level` per cell, read
at window close. Nothing here raises into the host app.
"""

from __future__ import annotations

import math
import numbers
import threading
from typing import Protocol

from client._drops import DropCounter, DropReason

__all__ = [
    "AddHandle",
    "CountingAdd",
    "CountingLevel",
    "CountingRecord",
    "Level",
    "LevelHandle",
    "RecordHandle",
    "RefusedAdd",
    "RefusedRecord",
    "ScaledAdd",
    "ScaledRecord",
    "whole",
]

_INF = math.inf


class AddHandle(Protocol):
    """Takes a counter amount (the client's `BoundCounter` is one)."""

    def add(self, amount: int = 1) -> None: ...


class RecordHandle(Protocol):
    """Takes a histogram value (the client's `BoundHistogram` is one)."""

    def record(self, value: float) -> None: ...


class LevelHandle(Protocol):
    """Moves or sets an up-down counter's or gauge's current value in one cell."""

    def add(self, amount: float) -> None: ...
    def set(self, amount: float) -> None: ...


def whole(amount: object) -> object:
    """A counter amount as an `int` when it is a whole number (OpenTelemetry allows
    `2.0`, numpy integers too); anything else unchanged, for the handle to refuse."""
    if isinstance(amount, bool):
        return amount
    if isinstance(amount, numbers.Integral):
        return int(amount)
    if isinstance(amount, float) and amount.is_integer():
        return int(amount)
    return amount


class ScaledAdd:
    """Adds `amount x factor` (a declared unit conversion; whole factors only)."""

    __slots__ = ("_factor", "_inner")

    def __init__(self, inner: AddHandle, factor: int) -> None:
        self._inner = inner
        self._factor = factor

    def add(self, amount: int = 1) -> None:
        self._inner.add(amount * self._factor if type(amount) is int else amount)


class ScaledRecord:
    """Records `value x factor` (a declared unit conversion, e.g. ms into s)."""

    __slots__ = ("_factor", "_inner")

    def __init__(self, inner: RecordHandle, factor: float) -> None:
        self._inner = inner
        self._factor = factor

    def record(self, value: float) -> None:
        if type(value) is float or type(value) is int:
            self._inner.record(value * self._factor)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            self._inner.record(float(value) * self._factor)
        else:
            self._inner.record(value)  # refused and counted by the client's handle


class CountingAdd:
    """Counts an attribute set's undeclared attributes on every add, then adds."""

    __slots__ = ("_drops", "_inner", "_undeclared")

    def __init__(self, inner: AddHandle, drops: DropCounter, undeclared: int) -> None:
        self._inner = inner
        self._drops = drops
        self._undeclared = undeclared

    def add(self, amount: int = 1) -> None:
        self._drops.add(DropReason.OTEL_UNDECLARED_ATTRIBUTE, self._undeclared)
        self._inner.add(amount)


class CountingRecord:
    """Counts an attribute set's undeclared attributes on every record, then records."""

    __slots__ = ("_drops", "_inner", "_undeclared")

    def __init__(self, inner: RecordHandle, drops: DropCounter, undeclared: int) -> None:
        self._inner = inner
        self._drops = drops
        self._undeclared = undeclared

    def record(self, value: float) -> None:
        self._drops.add(DropReason.OTEL_UNDECLARED_ATTRIBUTE, self._undeclared)
        self._inner.record(value)


class CountingLevel:
    """Counts an attribute set's undeclared attributes on every change of a `Level`."""

    __slots__ = ("_drops", "_inner", "_undeclared")

    def __init__(self, inner: Level, drops: DropCounter, undeclared: int) -> None:
        self._inner = inner
        self._drops = drops
        self._undeclared = undeclared

    def add(self, amount: float) -> None:
        self._drops.add(DropReason.OTEL_UNDECLARED_ATTRIBUTE, self._undeclared)
        self._inner.add(amount)

    def set(self, amount: float) -> None:
        self._drops.add(DropReason.OTEL_UNDECLARED_ATTRIBUTE, self._undeclared)
        self._inner.set(amount)


class RefusedAdd:
    """Drops every amount and counts it under one reason."""

    __slots__ = ("_drops", "_reason")

    def __init__(self, drops: DropCounter, reason: DropReason) -> None:
        self._drops = drops
        self._reason = reason

    def add(self, amount: int = 1) -> None:
        self._drops.add(self._reason)


class RefusedRecord:
    """Drops every value and counts it under one reason."""

    __slots__ = ("_drops", "_reason")

    def __init__(self, drops: DropCounter, reason: DropReason) -> None:
        self._drops = drops
        self._reason = reason

    def record(self, value: float) -> None:
        self._drops.add(self._reason)

    def add(self, value: float) -> None:
        self._drops.add(self._reason)

    def set(self, value: float) -> None:
        self._drops.add(self._reason)


class Level:
    """The current value of an up-down counter or gauge in one cell, read at window
    close. `add` and `set` are `RecordHandle`-shaped hot paths; bad numbers are
    dropped and counted."""

    __slots__ = ("_drops", "_lock", "touched", "value")

    def __init__(self, drops: DropCounter) -> None:
        self._drops = drops
        self._lock = threading.Lock()
        self.value = 0.0
        self.touched = False

    def add(self, amount: float) -> None:
        if (type(amount) is int or type(amount) is float) and -_INF < amount < _INF:
            with self._lock:
                self.value += amount
                self.touched = True
        else:
            self._refuse_or(amount, self.add)

    def set(self, amount: float) -> None:
        if (type(amount) is int or type(amount) is float) and -_INF < amount < _INF:
            with self._lock:
                self.value = float(amount)
                self.touched = True
        else:
            self._refuse_or(amount, self.set)

    def read(self) -> float | None:
        """The value now, or None if nothing was ever recorded."""
        with self._lock:
            return self.value if self.touched else None

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()

    def _refuse_or(self, amount: object, apply: _Apply) -> None:
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
            self._drops.add(DropReason.WRONG_TYPE)
            return
        converted = float(amount)
        if not math.isfinite(converted):
            self._drops.add(DropReason.NOT_FINITE)
            return
        apply(converted)


class _Apply(Protocol):
    def __call__(self, amount: float) -> None: ...
