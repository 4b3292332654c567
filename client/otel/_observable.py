"""The OpenTelemetry API's observable instruments, polled once per window.

Quietwire has no metric reader: the client's window close is the one moment values are
read. Just before a window's cells are read (`Telemetry.add_window_observer`, on the
thread that closes windows: the client's worker in background mode) `ObservationPoller`
samples the up-down counters' and gauges' levels and runs every observable
instrument's callbacks. Callbacks are app code that may block, so they run on a thread
of their own, and the window waits for them at most `timeout` seconds: a callback that
raises, returns something other than observations, or has not returned by then is
counted (`otel_callback_failed`), and what it returns late is discarded. Observations
are applied by the closing thread after the wait, so nothing lands in a window after
its cells were read. While one round of callbacks is still running the next poll
does not start another (a hung callback costs one thread, not one per window).

An observable counter reports a cumulative total: each poll adds the increase since the
last one (a total that went down was reset, and counts from zero). Observable up-down
counters and gauges record each observation as one histogram event.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, CallbackT, Observation

from client._drops import DropCounter, DropReason
from client.otel._attributes import attribute_key
from client.otel._binding import CounterBinding, HistogramBinding, LevelBinding
from client.otel._sync import CACHE_LIMIT

__all__ = [
    "ObservablePoll",
    "ObservationPoller",
    "QuietwireObservableCounter",
    "QuietwireObservableGauge",
    "QuietwireObservableUpDownCounter",
]

_log = logging.getLogger("client")

Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _as_callable(callback: CallbackT) -> Callback:
    """A generator callback as a plain one: advanced to its first `yield` on its first
    call (on the poller's thread, never the app's), then sent the options."""
    if not isinstance(callback, Generator):
        return callback
    generator = callback
    started = False

    def call(options: CallbackOptions) -> Iterable[Observation]:
        nonlocal started
        try:
            if not started:
                next(generator)
                started = True
            return generator.send(options)
        except StopIteration:
            return []

    return call


@dataclass(slots=True)
class ObservablePoll:
    """One observable instrument's callbacks and where their observations go."""

    callbacks: list[Callback]
    apply: Callable[[list[Observation]], None]


class _ObservableBase:
    def __init__(self, callbacks: Sequence[CallbackT] | None) -> None:
        self.poll = ObservablePoll([_as_callable(c) for c in callbacks or ()], self._apply)

    def _apply(self, observations: list[Observation]) -> None:
        raise NotImplementedError


class QuietwireObservableCounter(_ObservableBase, metrics.ObservableCounter):
    """Cumulative totals; each poll adds the increase since the last to a counter signal."""

    def __init__(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None,
        unit: str,
        description: str,
        binding: CounterBinding | None,
        factor: int,
        drops: DropCounter,
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._binding = binding
        self._factor = factor
        self._drops = drops
        self._last: dict[object, int] = {}
        _ObservableBase.__init__(self, callbacks)

    def _apply(self, observations: list[Observation]) -> None:
        if self._binding is None:
            return
        for observation in observations:
            value = observation.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                self._drops.add(DropReason.WRONG_TYPE)
                continue
            if not math.isfinite(value):
                self._drops.add(DropReason.NOT_FINITE)
                continue
            if value < 0:
                self._drops.add(DropReason.NEGATIVE_AMOUNT)
                continue
            units = math.floor(value * self._factor)  # whole units of the signal
            key: object
            try:
                key = attribute_key(observation.attributes)
            except TypeError:
                key = repr(observation.attributes)
            if key not in self._last and len(self._last) >= CACHE_LIMIT:
                # Totals are remembered per attribute set; past the limit a new set
                # has no history to take an increase from.
                self._drops.add(DropReason.ATTRIBUTES_TOO_LARGE)
                continue
            last = self._last.get(key, 0)
            self._last[key] = units
            increase = units - last if units >= last else units
            if increase:
                handle, _ = self._binding.handle(observation.attributes)
                handle.add(increase)


class _ObservedValues(_ObservableBase):
    """Each observation is one event of a histogram signal."""

    def __init__(
        self, callbacks: Sequence[CallbackT] | None, binding: HistogramBinding | None
    ) -> None:
        self._binding = binding
        _ObservableBase.__init__(self, callbacks)

    def _apply(self, observations: list[Observation]) -> None:
        if self._binding is None:
            return
        for observation in observations:
            handle, _ = self._binding.handle(observation.attributes)
            handle.record(observation.value)


class QuietwireObservableUpDownCounter(_ObservedValues, metrics.ObservableUpDownCounter):
    """Observed values (a level: queue length, memory in use) into a histogram signal."""

    def __init__(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None,
        unit: str,
        description: str,
        binding: HistogramBinding | None,
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        _ObservedValues.__init__(self, callbacks, binding)


class QuietwireObservableGauge(_ObservedValues, metrics.ObservableGauge):
    """Observed values (temperature, battery, load) into a histogram signal."""

    def __init__(
        self,
        name: str,
        callbacks: Sequence[CallbackT] | None,
        unit: str,
        description: str,
        binding: HistogramBinding | None,
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        _ObservedValues.__init__(self, callbacks, binding)


@dataclass
class _Round:
    """One poll's callbacks, run on their own thread."""

    polls: list[ObservablePoll]
    timeout_millis: float
    done: list[tuple[ObservablePoll, list[Observation]]] = field(default_factory=list)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def run(self) -> None:
        options = CallbackOptions(timeout_millis=self.timeout_millis)
        for poll in self.polls:
            for callback in poll.callbacks:
                observations = _observe(callback, options)
                with self.lock:
                    if self.closed:
                        return  # too late for the window: discarded (counted at close)
                    if observations is None:
                        self.failed += 1
                    else:
                        self.done.append((poll, observations))

    def close(self) -> tuple[list[tuple[ObservablePoll, list[Observation]]], int]:
        """What finished in time, and how many callbacks failed or did not finish."""
        with self.lock:
            self.closed = True
            finished = len(self.done) + self.failed
        total = sum(len(poll.callbacks) for poll in self.polls)
        return self.done, self.failed + (total - finished)


def _observe(callback: Callback, options: CallbackOptions) -> list[Observation] | None:
    """A callback's observations, or None if it failed (raised, or returned garbage)."""
    try:
        observations = list(callback(options))
    except Exception:
        _log.warning("an observable instrument's callback failed", exc_info=True)
        return None
    if not all(isinstance(o, Observation) for o in observations):
        return None
    return observations


class ObservationPoller:
    """Samples levels and runs observable callbacks at each window close."""

    def __init__(self, drops: DropCounter, timeout: float) -> None:
        self._drops = drops
        self._timeout = timeout
        self._lock = threading.Lock()
        self._polls: list[ObservablePoll] = []
        self._levels: list[LevelBinding] = []
        self._running: threading.Thread | None = None

    def add_poll(self, poll: ObservablePoll) -> None:
        with self._lock:
            self._polls.append(poll)

    def add_levels(self, levels: LevelBinding) -> None:
        with self._lock:
            self._levels.append(levels)

    def poll(self) -> None:
        """One window close: levels first (local, fast), then the callbacks."""
        with self._lock:
            polls, levels = list(self._polls), list(self._levels)
        for binding in levels:
            binding.sample()
        polls = [p for p in polls if p.callbacks]
        if not polls:
            return
        if self._running is not None and self._running.is_alive():
            # The last round's callbacks still run: skip this round, count its callbacks.
            self._drops.add(DropReason.OTEL_CALLBACK_FAILED, sum(len(p.callbacks) for p in polls))
            return
        round_ = _Round(polls, self._timeout * 1000.0)
        thread = threading.Thread(target=round_.run, name="quietwire-otel-callbacks", daemon=True)
        self._running = thread
        thread.start()
        thread.join(self._timeout)
        done, failed = round_.close()
        if failed:
            self._drops.add(DropReason.OTEL_CALLBACK_FAILED, failed)
        for poll, observations in done:
            try:
                poll.apply(observations)
            except Exception:  # defensive: an observation the handles could not take
                self._drops.add(DropReason.OTEL_CALLBACK_FAILED)

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._running = None
        for binding in self._levels:
            binding.reset_after_fork()
