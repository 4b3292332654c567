"""The OpenTelemetry API's synchronous instruments, recording into Quietwire signals.

The hot path (`add`, `record`, `set`) is what the client's own instruments do: look the
attribute set up in a per-instrument cache keyed by its items, and hand the number to
the cached handle, which adds under its cell's lock. A new attribute set, an unhashable
value or a bad argument falls to the slow path, which resolves, caches (up to
`CACHE_LIMIT` sets), or drops and counts. Nothing here raises into the host app; the
`context` argument is accepted and ignored (no exemplars).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Generic, Protocol, TypeVar

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.util.types import Attributes

from client._drops import DropCounter, DropReason
from client.otel._handles import (
    AddHandle,
    LevelHandle,
    RecordHandle,
    RefusedAdd,
    RefusedRecord,
    whole,
)

__all__ = [
    "CACHE_LIMIT",
    "QuietwireCounter",
    "QuietwireGauge",
    "QuietwireHistogram",
    "QuietwireUpDownCounter",
]

CACHE_LIMIT = 1024
"""Attribute sets per instrument whose handle is remembered (as `client._instruments`):
past it, new sets still resolve, only more slowly, so free-form values cannot grow
memory without bound."""

_H = TypeVar("_H")
_H_co = TypeVar("_H_co", covariant=True)


class _Binding(Protocol[_H_co]):
    def handle(self, attributes: Mapping[str, object] | None) -> tuple[_H_co, bool]: ...


class _Handles(Generic[_H]):
    """The slow path shared by the instruments: resolve, cache, never raise."""

    __slots__ = ("_binding", "_cache", "_refused")

    def __init__(self, binding: _Binding[_H], refused: _H) -> None:
        self._binding = binding
        self._refused = refused
        self._cache: dict[object, _H] = {}

    def resolve(self, attributes: Attributes) -> _H:
        try:
            handle, cacheable = self._binding.handle(attributes)
        except Exception:  # not a mapping, a key that is not a string...: counted
            return self._refused
        if cacheable and len(self._cache) < CACHE_LIMIT:
            with contextlib.suppress(Exception):  # unhashable (or its hash raises): not cached
                self._cache[tuple(attributes.items()) if attributes else ()] = handle
        return handle


class _Synchronous(Generic[_H]):
    """What the four instruments share: their identity and their handles. The hot path
    stays inline in each (`add`, `record`, `set`): a method call per recording would
    cost more than the lookup itself."""

    def _bind(
        self, name: str, unit: str, description: str, binding: _Binding[_H], refused: _H
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._handles = _Handles(binding, refused)
        self._cache = self._handles._cache


class QuietwireCounter(_Synchronous[AddHandle], metrics.Counter):
    """`Counter.add` into a counter signal. Amounts are non-negative whole numbers."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        binding: _Binding[AddHandle],
        drops: DropCounter,
    ) -> None:
        self._bind(name, unit, description, binding, RefusedAdd(drops, DropReason.WRONG_TYPE))

    def add(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        try:
            handle = self._cache[tuple(attributes.items()) if attributes else ()]
        except Exception:  # new, unhashable, not a mapping, or a hash or == that raises
            handle = self._handles.resolve(attributes)
        handle.add(amount if type(amount) is int else whole(amount))  # type: ignore[arg-type]


class QuietwireHistogram(_Synchronous[RecordHandle], metrics.Histogram):
    """`Histogram.record` into a histogram signal, in the policy's buckets (the
    advisory bucket boundaries are ignored: the policy's are fixed and declared)."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        binding: _Binding[RecordHandle],
        drops: DropCounter,
    ) -> None:
        self._bind(name, unit, description, binding, RefusedRecord(drops, DropReason.WRONG_TYPE))

    def record(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        try:
            handle = self._cache[tuple(attributes.items()) if attributes else ()]
        except Exception:  # new, unhashable, not a mapping, or a hash or == that raises
            handle = self._handles.resolve(attributes)
        handle.record(amount)


class QuietwireUpDownCounter(_Synchronous[LevelHandle], metrics.UpDownCounter):
    """`UpDownCounter.add` moves a value per cell; each window records it once, at
    window close, into a histogram signal (its distribution over the fleet)."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        binding: _Binding[LevelHandle],
        drops: DropCounter,
    ) -> None:
        self._bind(name, unit, description, binding, RefusedRecord(drops, DropReason.WRONG_TYPE))

    def add(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        try:
            handle = self._cache[tuple(attributes.items()) if attributes else ()]
        except Exception:  # new, unhashable, not a mapping, or a hash or == that raises
            handle = self._handles.resolve(attributes)
        handle.add(amount)


class QuietwireGauge(_Synchronous[LevelHandle], metrics._Gauge):
    """`Gauge.set` keeps the last value per cell; each window records it once, at
    window close, into a histogram signal."""

    def __init__(
        self,
        name: str,
        unit: str,
        description: str,
        binding: _Binding[LevelHandle],
        drops: DropCounter,
    ) -> None:
        self._bind(name, unit, description, binding, RefusedRecord(drops, DropReason.WRONG_TYPE))

    def set(
        self, amount: float, attributes: Attributes = None, context: Context | None = None
    ) -> None:
        try:
            handle = self._cache[tuple(attributes.items()) if attributes else ()]
        except Exception:  # new, unhashable, not a mapping, or a hash or == that raises
            handle = self._handles.resolve(attributes)
        handle.set(amount)
