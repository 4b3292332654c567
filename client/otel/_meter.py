"""Quietwire's `MeterProvider` and `Meter` for the OpenTelemetry metrics API.

`get_meter` hands out meters that create instruments recording into the policy's
signals, as the policy's `otel` section maps them. Creating an instrument never raises
(the API's contract): one the policy does not map, maps to a signal of an incompatible
kind, or created with a unit the mapping does not declare becomes an instrument that
drops every measurement and counts it (`otel_undeclared_instrument`), logged once.
Instruments are created once per (kind, name, unit) and shared by every meter: they
record into the same signal whichever library asked.

What an instrument kind may feed: a counter or observable counter, a counter signal;
a histogram, up-down counter, gauge, observable up-down counter or observable gauge, a
histogram signal (levels and gauges as one event per cell per window).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TypeVar

from opentelemetry import metrics
from opentelemetry.metrics import CallbackT
from opentelemetry.util.types import Attributes

from client._drops import DropCounter, DropReason
from client._instruments import Counter, Histogram
from client._telemetry import Telemetry
from client.otel._attributes import AttributeMap
from client.otel._binding import (
    CounterBinding,
    HistogramBinding,
    LevelBinding,
    RefusedBinding,
)
from client.otel._handles import RefusedAdd, RefusedRecord
from client.otel._observable import (
    ObservationPoller,
    QuietwireObservableCounter,
    QuietwireObservableGauge,
    QuietwireObservableUpDownCounter,
)
from client.otel._sync import (
    QuietwireCounter,
    QuietwireGauge,
    QuietwireHistogram,
    QuietwireUpDownCounter,
)
from policies import OtelInstrument

__all__ = ["QuietwireMeter", "QuietwireMeterProvider"]

_log = logging.getLogger("client")
_I = TypeVar("_I", bound=metrics.Instrument)


class _Instruments:
    """Creates each instrument once, bound to its signal or refusing (shared by meters)."""

    def __init__(self, telemetry: Telemetry, poller: ObservationPoller) -> None:
        self._telemetry = telemetry
        self._policy = telemetry.policy
        self._drops: DropCounter = telemetry.drops
        self._poller = poller
        self._lock = threading.Lock()
        self._made: dict[tuple[str, str, str], metrics.Instrument] = {}

    def get(self, kind: str, name: str, unit: str, make: Callable[[], _I]) -> _I:
        key = (kind, str(name).lower(), str(unit))
        with self._lock:
            made = self._made.get(key)
            if made is None:
                made = self._made[key] = make()
        return made  # type: ignore[return-value]

    def spec(self, name: str, unit: str, signal_kind: str) -> tuple[OtelInstrument, float] | None:
        """The mapping and unit factor of an instrument, or None (logged) if refused."""
        otel = self._policy.otel
        spec = otel.instrument(str(name)) if otel is not None else None
        why = None
        if spec is None:
            why = "the policy's otel section does not map it"
        elif (signal := self._policy.signals.get(spec.signal)) is None:
            # Defensive (`TelemetryConfig` validates the policy's cross-references):
            # creating an instrument must never raise into the app.
            why = f"it maps to {spec.signal!r}, which the catalogue lacks"
        else:
            factor = spec.factor_for(unit, signal.unit)
            if signal.kind != signal_kind:
                why = f"it maps to {spec.signal!r}, a {signal.kind}, not a {signal_kind}"
            elif factor is None:
                why = f"its unit {unit!r} is not one the mapping declares"
            else:
                return spec, factor
        _log.warning("OpenTelemetry instrument %r is dropped: %s", name, why)
        return None

    def attribute_map(self, spec: OtelInstrument) -> AttributeMap:
        return AttributeMap(spec, self._policy.signals[spec.signal].attributes)

    def counter_binding(self, name: str, unit: str) -> tuple[CounterBinding, int] | None:
        found = self.spec(name, unit, "counter")
        if found is None:
            return None
        spec, factor = found
        counter = self._telemetry.counter(spec.signal)
        assert isinstance(counter, Counter)
        whole = int(factor)  # the policy checks a counter's factors are whole numbers
        return CounterBinding(counter, self.attribute_map(spec), whole, self._drops), whole

    def histogram_parts(self, name: str, unit: str) -> tuple[Histogram, AttributeMap, float] | None:
        found = self.spec(name, unit, "histogram")
        if found is None:
            return None
        spec, factor = found
        histogram = self._telemetry.histogram(spec.signal)
        return histogram, self.attribute_map(spec), factor

    @property
    def drops(self) -> DropCounter:
        return self._drops

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def poller(self) -> ObservationPoller:
        return self._poller


class QuietwireMeter(metrics.Meter):
    """A meter whose instruments record into the policy's signals."""

    def __init__(
        self, name: str, version: str | None, schema_url: str | None, instruments: _Instruments
    ) -> None:
        super().__init__(name, version=version, schema_url=schema_url)
        self._instruments = instruments

    def create_counter(self, name: str, unit: str = "", description: str = "") -> metrics.Counter:
        return self._instruments.get(
            "counter", name, unit, lambda: self._counter(name, unit, description)
        )

    def _counter(self, name: str, unit: str, description: str) -> metrics.Counter:
        drops = self._instruments.drops
        bound = self._instruments.counter_binding(name, unit)
        if bound is None:
            refused = RefusedBinding(RefusedAdd(drops, DropReason.OTEL_UNDECLARED_INSTRUMENT))
            return QuietwireCounter(name, unit, description, refused, drops)
        return QuietwireCounter(name, unit, description, bound[0], drops)

    def create_up_down_counter(
        self, name: str, unit: str = "", description: str = ""
    ) -> metrics.UpDownCounter:
        def make() -> metrics.UpDownCounter:
            drops = self._instruments.drops
            levels = self._levels(name, unit)
            if levels is None:
                refused = RefusedBinding(
                    RefusedRecord(drops, DropReason.OTEL_UNDECLARED_INSTRUMENT)
                )
                return QuietwireUpDownCounter(name, unit, description, refused, drops)
            return QuietwireUpDownCounter(name, unit, description, levels, drops)

        return self._instruments.get("up_down_counter", name, unit, make)

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> metrics.Histogram:
        def make() -> metrics.Histogram:
            drops = self._instruments.drops
            parts = self._instruments.histogram_parts(name, unit)
            if parts is None:
                refused = RefusedBinding(
                    RefusedRecord(drops, DropReason.OTEL_UNDECLARED_INSTRUMENT)
                )
                return QuietwireHistogram(name, unit, description, refused, drops)
            binding = HistogramBinding(*parts, drops)
            return QuietwireHistogram(name, unit, description, binding, drops)

        return self._instruments.get("histogram", name, unit, make)

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> metrics._Gauge:
        def make() -> metrics._Gauge:
            drops = self._instruments.drops
            levels = self._levels(name, unit)
            if levels is None:
                refused = RefusedBinding(
                    RefusedRecord(drops, DropReason.OTEL_UNDECLARED_INSTRUMENT)
                )
                return QuietwireGauge(name, unit, description, refused, drops)
            return QuietwireGauge(name, unit, description, levels, drops)

        return self._instruments.get("gauge", name, unit, make)

    def create_observable_counter(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None = None,
        unit: str = "",
        description: str = "",
    ) -> metrics.ObservableCounter:
        def make() -> metrics.ObservableCounter:
            drops = self._instruments.drops
            bound = self._instruments.counter_binding(name, unit)
            if bound is None:
                drops.add(DropReason.OTEL_UNDECLARED_INSTRUMENT)
                return QuietwireObservableCounter(name, None, unit, description, None, 1, drops)
            binding, factor = bound
            made = QuietwireObservableCounter(
                name, callbacks, unit, description, binding, factor, drops
            )
            self._instruments.poller.add_poll(made.poll)
            return made

        return self._instruments.get("observable_counter", name, unit, make)

    def create_observable_up_down_counter(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None = None,
        unit: str = "",
        description: str = "",
    ) -> metrics.ObservableUpDownCounter:
        def make() -> metrics.ObservableUpDownCounter:
            binding = self._observed(name, unit)
            made = QuietwireObservableUpDownCounter(
                name, callbacks if binding else None, unit, description, binding
            )
            if binding is not None:
                self._instruments.poller.add_poll(made.poll)
            return made

        return self._instruments.get("observable_up_down_counter", name, unit, make)

    def create_observable_gauge(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None = None,
        unit: str = "",
        description: str = "",
    ) -> metrics.ObservableGauge:
        def make() -> metrics.ObservableGauge:
            binding = self._observed(name, unit)
            made = QuietwireObservableGauge(
                name, callbacks if binding else None, unit, description, binding
            )
            if binding is not None:
                self._instruments.poller.add_poll(made.poll)
            return made

        return self._instruments.get("observable_gauge", name, unit, make)

    def _levels(self, name: str, unit: str) -> LevelBinding | None:
        parts = self._instruments.histogram_parts(name, unit)
        if parts is None:
            return None
        levels = LevelBinding(*parts, self._instruments.drops)
        self._instruments.poller.add_levels(levels)
        return levels

    def _observed(self, name: str, unit: str) -> HistogramBinding | None:
        parts = self._instruments.histogram_parts(name, unit)
        if parts is None:
            # Its callbacks are never run: counted once, here.
            self._instruments.drops.add(DropReason.OTEL_UNDECLARED_INSTRUMENT)
            return None
        return HistogramBinding(*parts, self._instruments.drops)


class QuietwireMeterProvider(metrics.MeterProvider):
    """The OpenTelemetry `MeterProvider` of a Quietwire client.

        provider = QuietwireMeterProvider(telemetry)
        metrics.set_meter_provider(provider)

    From then on `metrics.get_meter(...)` instruments record into `telemetry`'s signals
    through consent, bounded contributions, DP and attestation like the client's own.
    Observable instruments and up-down counter/gauge levels are read once per window,
    at window close, by the thread that closes windows; callbacks run on a thread of
    their own, waited for at most `callback_timeout` seconds. The provider does not
    own the client: `shutdown()` here shuts it down, as the SDK's provider does its
    readers, and `force_flush()` sends what is pending.
    """

    def __init__(self, telemetry: Telemetry, *, callback_timeout: float = 2.0) -> None:
        self._telemetry = telemetry
        self._poller = ObservationPoller(telemetry.drops, callback_timeout)
        self._instruments = _Instruments(telemetry, self._poller)
        self._meters: dict[tuple[str, str | None, str | None], QuietwireMeter] = {}
        self._lock = threading.Lock()
        telemetry.add_window_observer(self._poller.poll)
        # Held weakly, each on its own: the app may keep only its meters and
        # instruments, whose locks must be replaced in a child all the same.
        refs = (weakref.ref(self), weakref.ref(self._instruments), weakref.ref(self._poller))

        def _after_fork_in_child() -> None:
            for ref in refs:
                held = ref()
                if held is not None:
                    held.reset_after_fork()

        os.register_at_fork(after_in_child=_after_fork_in_child)

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes = None,
    ) -> metrics.Meter:
        """A meter for the instrumentation library `name` (its attributes are not sent)."""
        key = (name, version, schema_url)
        with self._lock:
            meter = self._meters.get(key)
            if meter is None:
                meter = self._meters[key] = QuietwireMeter(
                    name, version, schema_url, self._instruments
                )
        return meter

    def reset_after_fork(self) -> None:
        """Give a forked child fresh locks (a parent thread may have held them)."""
        self._lock = threading.Lock()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Send every pending envelope; True when none is left (`Telemetry.flush`)."""
        return self._telemetry.flush(timeout=timeout_millis / 1000.0)

    def shutdown(self, timeout_millis: float = 10_000) -> None:
        """Release the windows that ended, carry the open one to the next run, and send
        (`Telemetry.shutdown`)."""
        self._telemetry.shutdown(timeout=timeout_millis / 1000.0)
