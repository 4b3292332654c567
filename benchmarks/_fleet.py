"""A simulated fleet's days in bulk: `fleetsim._simulation`'s distributions, vectorised.

The simulator draws a device's window event by event in Python, far too slow for
100,000 devices over hundreds of days. Here the same distributions are drawn with numpy
for a whole fleet at once, from the simulator's own device profiles and parameters:

- a day is the policy's window (one day in the default), and a device's requests in it
  are Poisson(requests_per_window x window / six hours), as `simulate_window` scales
  its six-hour rate: about 84 requests, the day the default policy's bounds are tuned
  for;
- routes Multinomial(requests, route_mix); per request a latency LogNormal(log median,
  0.5) with the route's median (x 1.3 for the canary cohort on the local route), tokens
  int(LogNormal(log 300, 0.9)) + 1; failures Binomial(requests on the route, its rate);
- every figure in the cell of its route and model version (a label a signal does not
  declare is left out); each failed request is also one exception (the demo records one
  per failure), all of one fingerprint, so one `app.exceptions` cell per route and model
  (which fingerprint does not matter to a total).

Clamping each model's day: `benchmarks._day_sums`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchmarks._types import FloatArray, IntArray
from benchmarks._variants import local_variant
from client._domain import CellDomain

# The simulator's own parameters (private to it), so the two cannot drift apart.
from fleetsim._simulation import (
    _CANARY_LOCAL_FAILURE,
    _CANARY_LOCAL_SLOWDOWN,
    _FAILURE_RATE,
    _LATENCY_MEDIAN,
    MODEL_CANARY,
    MODEL_STABLE,
    ROUTES,
    SIX_HOURS,
    DeviceProfile,
    FleetSpec,
    device_profiles,
)
from policies import (
    OTHER,
    CounterSignal,
    HistogramSignal,
    Policy,
    aggregation_tasks,
)

__all__ = [
    "ERRORS",
    "EXCEPTIONS",
    "LATENCY",
    "MODELS",
    "REQUESTS",
    "ROUTES",
    "SLOWDOWN",
    "TOKENS",
    "Day",
    "Fleet",
    "HistogramDay",
    "Layout",
    "draw_day",
    "fleet_of",
]

# As in `fleetsim._simulation.simulate_window`.
_LATENCY_SIGMA = 0.5
_TOKENS_MEDIAN, _TOKENS_SIGMA = 300.0, 0.9

REQUESTS = "inference.requests"
ERRORS = "inference.errors"
EXCEPTIONS = "app.exceptions"
LATENCY = "gen_ai.client.operation.duration"
TOKENS = "gen_ai.client.token.usage"
MODELS = (MODEL_STABLE, MODEL_CANARY)
SLOWDOWN = _CANARY_LOCAL_SLOWDOWN
_LOCAL = ROUTES.index("local")


@dataclass(frozen=True, slots=True)
class Fleet:
    """Per-device traits of a simulated fleet (from `device_profiles`)."""

    rate: FloatArray  # requests per window
    mix: FloatArray  # (devices, 3) route probabilities
    canary: npt.NDArray[np.bool_]

    @classmethod
    def from_profiles(cls, profiles: Sequence[DeviceProfile], window_seconds: int) -> Fleet:
        scale = window_seconds / SIX_HOURS  # as `simulate_window` scales its rate
        return cls(
            rate=np.array([p.requests_per_window * scale for p in profiles]),
            mix=np.array([p.route_mix for p in profiles]),
            canary=np.array([p.model == MODEL_CANARY for p in profiles]),
        )

    @property
    def size(self) -> int:
        return len(self.rate)


@dataclass(frozen=True, slots=True)
class Day:
    """One day of every device. Events are stored in (device, route) groups, in order."""

    requests: IntArray  # (devices, 3) per route
    failures: IntArray  # (devices, 3)
    starts: IntArray  # (3 devices + 1,) offset of each group's first event
    latency: FloatArray  # (events,) latency / the group's median: LogNormal(0, 0.5)
    tokens: FloatArray  # (events,)


def draw_day(fleet: Fleet, rng: np.random.Generator) -> Day:
    """Draw one day of every device of `fleet`."""
    n = rng.poisson(fleet.rate)
    m = rng.multinomial(n, fleet.mix).astype(np.int64)
    p = np.broadcast_to(np.array([_FAILURE_RATE[r] for r in ROUTES]), m.shape).copy()
    p[fleet.canary, _LOCAL] = _CANARY_LOCAL_FAILURE
    events = int(m.sum())
    return Day(
        requests=m,
        failures=rng.binomial(m, p).astype(np.int64),
        starts=np.concatenate([[0], np.cumsum(m.ravel())]).astype(np.int64),
        latency=np.exp(_LATENCY_SIGMA * rng.standard_normal(events)),
        tokens=np.floor(
            np.exp(math.log(_TOKENS_MEDIAN) + _TOKENS_SIGMA * rng.standard_normal(events))
        )
        + 1.0,
    )


@dataclass(frozen=True, slots=True)
class HistogramDay:
    """One histogram signal's day: each event's value is `scale[group] * base[event]`."""

    signal: HistogramSignal
    signal_name: str
    cell: IntArray  # (devices, 3) the cell of each (device, route) group
    scale: FloatArray  # (devices, 3)
    counts: IntArray  # (devices, 3)
    starts: IntArray
    base: FloatArray

    @property
    def cells(self) -> int:
        return int(CellDomain(self.signal.attributes).size)

    def per_cell(self) -> tuple[IntArray, FloatArray, FloatArray]:
        """Per device and cell: events, sum of values clamped to `value_range` (what the
        client's table holds), and sum of the unclamped values (the truth)."""
        lo, hi = self.signal.value_range
        if lo > 0.0:
            raise ValueError("values are positive: a value_range starting above 0 is not modelled")
        flat_counts = self.counts.ravel()
        nonempty = np.flatnonzero(flat_counts)
        group_sum = np.zeros(flat_counts.size)
        group_max = np.zeros(flat_counts.size)
        if self.base.size:
            group_sum[nonempty] = np.add.reduceat(self.base, self.starts[nonempty])
            group_max[nonempty] = np.maximum.reduceat(self.base, self.starts[nonempty])
        scale = self.scale.ravel()
        raw = scale * group_sum
        clamped = raw.copy()
        for g in np.flatnonzero(scale * group_max > hi):  # rare: a value above the range
            values = scale[g] * self.base[self.starts[g] : self.starts[g + 1]]
            clamped[g] = float(np.minimum(values, hi).sum())
        devices = self.counts.shape[0]
        rows = np.arange(devices)[:, None]
        events = np.zeros((devices, self.cells), dtype=np.int64)
        sums = np.zeros((devices, self.cells))
        totals = np.zeros((devices, self.cells))
        # A device's three routes are three different cells: plain assignment suffices.
        events[rows, self.cell] = self.counts
        sums[rows, self.cell] = clamped.reshape(self.counts.shape)
        totals[rows, self.cell] = raw.reshape(self.counts.shape)
        return events, sums, totals

    def buckets(self, rows: IntArray) -> IntArray:
        """Bucket counts of devices `rows`, flattened cell-major as the client's tasks are."""
        n_buckets = len(self.signal.buckets) + 1
        width = self.cells * n_buckets
        groups = (rows[:, None] * 3 + np.arange(3)).ravel()
        m = self.counts.ravel()[groups]
        offsets = np.concatenate([[0], np.cumsum(m)[:-1]])
        pos = np.arange(int(m.sum())) - np.repeat(offsets, m) + np.repeat(self.starts[groups], m)
        values = np.repeat(self.scale.ravel()[groups], m) * self.base[pos]
        # bisect_left, as the client's `Histogram.record`: a value on a bound is in its bucket.
        bucket = np.searchsorted(np.asarray(self.signal.buckets), values, side="left")
        cell = np.repeat(self.cell.ravel()[groups], m)
        row = np.repeat(np.arange(len(rows)).repeat(3), m)
        index = row * width + cell * n_buckets + bucket
        return np.bincount(index, minlength=len(rows) * width).reshape(len(rows), width)


class Layout:
    """The policy's signals, their cells for the simulated routes and models, and tasks."""

    def __init__(self, policy: Policy) -> None:
        s = policy.signals
        self.requests, self.errors, self.exceptions = (
            _counter(s[n]) for n in (REQUESTS, ERRORS, EXCEPTIONS)
        )
        self.latency, self.tokens = _histogram(s[LATENCY]), _histogram(s[TOKENS])
        local = local_variant(policy).signals  # the same bounds under the local model
        self.local_histograms = {n: _histogram(local[n]) for n in (LATENCY, TOKENS)}
        # The sums' units (a task's resolution) are the same at any epsilon.
        self.tasks = aggregation_tasks(policy)

        def by_route_model(signal: CounterSignal | HistogramSignal, **fixed: str) -> IntArray:
            domain = CellDomain(signal.attributes)
            labels = [
                {k: v for k, v in {"route": r, "model": m}.items() if k in signal.attributes}
                for r in ROUTES
                for m in MODELS
            ]
            cells = [domain.resolve({**fixed, **attrs})[0] for attrs in labels]
            return np.array(cells).reshape(len(ROUTES), len(MODELS))

        # (route, model) -> cell; a signal without one of those labels: its `other`.
        self.request_cell = by_route_model(self.requests)
        self.latency_cell = by_route_model(self.latency)
        self.error_cell = by_route_model(self.errors)
        self.token_cell = by_route_model(self.tokens)
        fingerprint = self.exceptions.attributes.get("fingerprint", [OTHER])[0]
        self.exception_cell = by_route_model(self.exceptions, fingerprint=fingerprint)

    def latency_day(self, fleet: Fleet, day: Day, slowdown: float) -> HistogramDay:
        median = np.array([_LATENCY_MEDIAN[r] for r in ROUTES])
        scale = np.broadcast_to(median, day.requests.shape).copy()
        scale[fleet.canary, _LOCAL] *= slowdown
        cell = _cells_of(self.latency_cell, fleet)
        return HistogramDay(
            self.latency, LATENCY, cell, scale, day.requests, day.starts, day.latency
        )

    def tokens_day(self, fleet: Fleet, day: Day) -> HistogramDay:
        shape = day.requests.shape
        cell = _cells_of(self.token_cell, fleet)
        return HistogramDay(
            self.tokens, TOKENS, cell, np.ones(shape), day.requests, day.starts, day.tokens
        )

    def counter_rows(self, fleet: Fleet, day: Day) -> dict[str, IntArray]:
        """Each counter's raw window per device: (devices, cells)."""
        devices = fleet.size
        rows = np.arange(devices)[:, None]
        out: dict[str, IntArray] = {}
        for name, signal, cells, counts in (
            (REQUESTS, self.requests, self.request_cell, day.requests),
            (ERRORS, self.errors, self.error_cell, day.failures),
            (EXCEPTIONS, self.exceptions, self.exception_cell, day.failures),
        ):
            row = np.zeros((devices, CellDomain(signal.attributes).size), np.int64)
            # np.add.at: a signal without a route label has one cell for all three.
            np.add.at(row, (np.broadcast_to(rows, counts.shape), _cells_of(cells, fleet)), counts)
            out[name] = row
        return out

    def counter_signal(self, name: str) -> CounterSignal:
        return {REQUESTS: self.requests, ERRORS: self.errors, EXCEPTIONS: self.exceptions}[name]


def _cells_of(by_route_model: IntArray, fleet: Fleet) -> IntArray:
    """(devices, 3): each device's cell per route, for its model version."""
    out: IntArray = by_route_model[np.arange(3)[None, :], fleet.canary.astype(np.int64)[:, None]]
    return out


def _counter(signal: object) -> CounterSignal:
    if not isinstance(signal, CounterSignal):
        raise TypeError(f"expected a counter, got {type(signal).__name__}")
    return signal


def _histogram(signal: object) -> HistogramSignal:
    if not isinstance(signal, HistogramSignal):
        raise TypeError(f"expected a histogram, got {type(signal).__name__}")
    return signal


def fleet_of(devices: int, window_seconds: int) -> Fleet:
    """The simulated fleet of `devices` devices (the demo's profiles and seed)."""
    return Fleet.from_profiles(device_profiles(FleetSpec(devices=devices)), window_seconds)
