"""Instruments: `Counter.add` and `Histogram.record`, the host app's hot path.

The path is: validate the number with exact type checks, find the cell through a cache
keyed by the call's attribute items (no sorting, no policy lookups), and add under the
cell's own lock. Anything unusual (a new attribute set, a numpy scalar, bad input)
falls to a slow path that resolves, converts or drops and counts. Nothing here raises
into the host app.

Why a lock and not bare `+=`: under the GIL `x += n` is a read, an add and a store, and
a thread switch between them loses an update; an uncontended `threading.Lock` costs
well under 100 ns here and keeps every count exact.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
from bisect import bisect_left
from typing import Protocol, TypeVar

from client._aggregation import CounterCell, CounterTable, HistogramCell, HistogramTable
from client._domain import CellDomain
from client._drops import DropCounter, DropReason

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_KEY_CHARS",
    "MAX_ATTRIBUTE_VALUE_CHARS",
    "BoundCounter",
    "BoundHistogram",
    "Counter",
    "Histogram",
]

# Distinct attribute sets (per instrument) whose resolution is remembered. Past this,
# new sets still resolve correctly, only more slowly, so a caller passing free-form
# values cannot grow memory without bound.
_CACHE_LIMIT = 1024
_INF = math.inf

MAX_ATTRIBUTES = 32
"""Attributes one measurement may carry; more and it is dropped (`attributes_too_large`)."""
MAX_ATTRIBUTE_KEY_CHARS = 128
"""The longest attribute name accepted (policy labels are short identifiers)."""
MAX_ATTRIBUTE_VALUE_CHARS = 256
"""The longest string attribute value accepted. A longer one cannot be a declared value;
refusing it also keeps a pasted document from being held in the cell cache."""


class Counter:
    """A counter signal of the policy: `add(amount, **attributes)` counts per window.

    Amounts are non-negative integers. A value outside a label's declared domain counts
    as `other`; a label the policy does not declare is dropped and counted.
    """

    __slots__ = ("_cache", "_domain", "_drops", "_table", "name")

    def __init__(self, name: str, domain: CellDomain, table: CounterTable, drops: DropCounter):
        self.name = name
        self._domain = domain
        self._table = table
        self._drops = drops
        self._cache: dict[tuple[tuple[str, object], ...], CounterCell] = {}

    def add(self, amount: int = 1, /, **attributes: object) -> None:
        """Add `amount` (a non-negative int) to the cell of `attributes`. Never raises.

        `amount` is positional-only: an attribute named `amount` is one like any other."""
        if type(amount) is int and amount >= 0:
            try:
                cell = self._cache[tuple(attributes.items())]
            except Exception:  # new, unhashable, or a value whose hash or == raises
                found = self._cell_for(attributes)
                if found is None:
                    return
                cell = found
            with cell.lock:
                cell.value += amount
        else:
            self._add_slow(amount, attributes)

    def bind(self, /, **attributes: object) -> BoundCounter:
        """A handle fixed to one attribute set: the fastest way to add repeatedly.

        Undeclared labels are counted once, here, not on every add; so are attributes
        over the size bounds, whose handle then adds to a cell no window reads.
        """
        return BoundCounter(self, self._cell_for(attributes) or CounterCell())

    def _cell_for(self, attributes: dict[str, object]) -> CounterCell | None:
        return _resolve_cell(attributes, self._domain, self._table, self._drops, self._cache)

    def _add_slow(self, amount: object, attributes: dict[str, object]) -> None:
        count, reason = _as_count(amount)
        if reason is not None:
            self._drops.add(reason)
            return
        self.add(count, **attributes)


class BoundCounter:
    """A counter fixed to one attribute set (see `Counter.bind`)."""

    __slots__ = ("_cell", "_counter")

    def __init__(self, counter: Counter, cell: CounterCell) -> None:
        self._counter = counter
        self._cell = cell

    def add(self, amount: int = 1) -> None:
        """Add `amount` (a non-negative int). Never raises."""
        if type(amount) is int and amount >= 0:
            cell = self._cell
            with cell.lock:
                cell.value += amount
        else:
            count, reason = _as_count(amount)
            if reason is not None:
                self._counter._drops.add(reason)
            else:
                self.add(count)


class Histogram:
    """A histogram signal of the policy: `record(value, **attributes)` per window.

    Values are finite real numbers. Buckets are the policy's explicit upper bounds
    (OpenTelemetry style: a value equal to a bound falls in that bound's bucket); the
    sum used for means adds values clamped to the policy's `value_range`.
    """

    __slots__ = ("_bounds", "_cache", "_domain", "_drops", "_hi", "_lo", "_table", "name")

    def __init__(
        self,
        name: str,
        domain: CellDomain,
        table: HistogramTable,
        drops: DropCounter,
        bounds: list[float],
        value_range: tuple[float, float],
    ) -> None:
        self.name = name
        self._domain = domain
        self._table = table
        self._drops = drops
        self._bounds = list(bounds)
        self._lo, self._hi = value_range
        self._cache: dict[tuple[tuple[str, object], ...], HistogramCell] = {}

    def record(self, value: float, /, **attributes: object) -> None:
        """Record one finite value in the cell of `attributes`. Never raises.

        `value` is positional-only: an attribute named `value` is one like any other."""
        if (type(value) is float or type(value) is int) and -_INF < value < _INF:
            try:
                cell = self._cache[tuple(attributes.items())]
            except Exception:  # new, unhashable, or a value whose hash or == raises
                found = self._cell_for(attributes)
                if found is None:
                    return
                cell = found
            bucket = bisect_left(self._bounds, value)
            clamped = self._lo if value < self._lo else self._hi if value > self._hi else value
            with cell.lock:
                cell.counts[bucket] += 1
                cell.total += clamped
        else:
            self._record_slow(value, attributes)

    def bind(self, /, **attributes: object) -> BoundHistogram:
        """A handle fixed to one attribute set: the fastest way to record repeatedly.

        As for `Counter.bind`, oversized attributes are counted once, here.
        """
        cell = self._cell_for(attributes) or HistogramCell(len(self._bounds) + 1)
        return BoundHistogram(self, cell)

    def _cell_for(self, attributes: dict[str, object]) -> HistogramCell | None:
        return _resolve_cell(attributes, self._domain, self._table, self._drops, self._cache)

    def _record_slow(self, value: object, attributes: dict[str, object]) -> None:
        converted, reason = _as_finite_float(value)
        if reason is not None:
            self._drops.add(reason)
            return
        self.record(converted, **attributes)


class BoundHistogram:
    """A histogram fixed to one attribute set (see `Histogram.bind`)."""

    __slots__ = ("_bounds", "_cell", "_hi", "_histogram", "_lo")

    def __init__(self, histogram: Histogram, cell: HistogramCell) -> None:
        self._histogram = histogram
        self._cell = cell
        self._bounds = histogram._bounds
        self._lo = histogram._lo
        self._hi = histogram._hi

    def record(self, value: float) -> None:
        """Record one finite value. Never raises."""
        if (type(value) is float or type(value) is int) and -_INF < value < _INF:
            bucket = bisect_left(self._bounds, value)
            clamped = self._lo if value < self._lo else self._hi if value > self._hi else value
            cell = self._cell
            with cell.lock:
                cell.counts[bucket] += 1
                cell.total += clamped
        else:
            converted, reason = _as_finite_float(value)
            if reason is not None:
                self._histogram._drops.add(reason)
            else:
                self.record(converted)


_Cell = TypeVar("_Cell", CounterCell, HistogramCell)
_CellOut = TypeVar("_CellOut", CounterCell, HistogramCell, covariant=True)


class _Table(Protocol[_CellOut]):
    def cell(self, index: int) -> _CellOut: ...


def _resolve_cell(
    attributes: dict[str, object],
    domain: CellDomain,
    table: _Table[_Cell],
    drops: DropCounter,
    cache: dict[tuple[tuple[str, object], ...], _Cell],
) -> _Cell | None:
    """The slow path of both instruments: resolve an attribute set, remember its cell.

    None (counted, never cached) when the attributes exceed the size bounds.
    """
    if _too_large(attributes):
        drops.add(DropReason.ATTRIBUTES_TOO_LARGE)
        return None
    try:
        index, undeclared = domain.resolve(attributes)
        cell = table.cell(index)
        if undeclared:
            # Not cached, so that every call with an undeclared label is counted.
            drops.add(DropReason.UNDECLARED_LABEL, len(undeclared))
        elif len(cache) < _CACHE_LIMIT:
            # An unhashable value (or one whose hash raises) is resolved, just not cached.
            with contextlib.suppress(Exception):
                cache[tuple(attributes.items())] = cell
        return cell
    except Exception:  # pragma: no cover - defensive: the host app must not see it
        return table.cell(domain.size - 1)


def _too_large(attributes: dict[str, object]) -> bool:
    try:
        if len(attributes) > MAX_ATTRIBUTES:
            return True
        for key, value in attributes.items():
            if len(key) > MAX_ATTRIBUTE_KEY_CHARS:
                return True
            if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_VALUE_CHARS:
                return True
    except Exception:
        # A str subclass whose len() raises: its size cannot be bounded, and no declared
        # label or value is like that. Refused (and counted), never raised into the app.
        return True
    return False


def _as_count(amount: object) -> tuple[int, DropReason | None]:
    """A counter amount as an int (numpy integers too), or the reason it is refused.
    Never raises, not even for an object whose `__class__` lookup does."""
    try:
        if isinstance(amount, bool) or not isinstance(amount, numbers.Integral):
            if isinstance(amount, float) and not math.isfinite(amount):
                return 0, DropReason.NOT_FINITE
            return 0, DropReason.WRONG_TYPE
        count = operator.index(amount)
    except Exception:
        return 0, DropReason.WRONG_TYPE
    return count, DropReason.NEGATIVE_AMOUNT if count < 0 else None


def _as_finite_float(value: object) -> tuple[float, DropReason | None]:
    """A histogram value as a float, or the reason it is refused (never raises)."""
    try:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return 0.0, DropReason.WRONG_TYPE
        converted = float(value)
    except Exception:
        return 0.0, DropReason.WRONG_TYPE
    if not math.isfinite(converted):
        return 0.0, DropReason.NOT_FINITE
    return converted, None
