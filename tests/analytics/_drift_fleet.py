"""Simulated fleets for the drift tests: one day's latency histograms per (route, model)
cell, released under a policy's own noise, as the sides a drift test compares.

The usage model is fleetsim's (`fleetsim._simulation`): per device a daily rate
Gamma(1.5, 14) x 4 (per six hours, four per day), a route mix Dirichlet(4, 2, 3), a
canary model on 25% of devices, and per event a lognormal latency around the route's
median with sigma 0.5. Drawn here in numpy for whole fleets at once (up to tens of
millions of devices): a cell's events are its devices' events after the policy's
per-device caps (a heavy day is scaled down), drawn as a normal with the fleet's mean
and variance (per-device moments from 200,000 simulated device-days: the sum over
thousands of devices is close to normal); its buckets are a multinomial draw of those
events and its sum their latencies added (a normal with the lognormal's moments).

The noise is the policy's, drawn independently of analytics' own sampler: per secure
aggregate entry two discrete Laplace draws (each the difference of two geometric ones),
and under the local model the sum of every device's draws (normal, of the exact
variance: there are a million or more).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from scipy.stats import norm  # type: ignore[import-untyped]

from analytics._drift_null import HistogramSide
from analytics._noise import NoiseTerm, noise_variance
from client._release import epsilon_split
from policies import DEFAULT_POLICY_PATH, PILOT_POLICY_PATH, HistogramSignal, load_policy
from policies import aggregation_tasks as tasks_of
from schemas import Mechanism

LATENCY = "gen_ai.client.operation.duration"
# fleetsim's usage model (fleetsim._simulation; test_drift checks they agree). Kept here
# so these tests need not import the demo's wiring (client, ingest, Kafka).
ROUTES = ("local", "edge", "cloud")
MODELS = ("qwen2.5-7b@1.0", "qwen2.5-7b@1.1")
LATENCY_MEDIAN = {"local": 0.8, "edge": 0.35, "cloud": 1.2}
SIX_HOURS = 21_600
CANARY_SHARE = 0.25
_SIGMA = 0.5
_DAY = 86_400

Array = npt.NDArray[np.float64]
Cell = tuple[str, str]  # (route, model)


@dataclass(frozen=True)
class PolicyNoise:
    """What one device's day releases for the latency histogram, and its noise."""

    local: bool
    edges: tuple[float, ...]
    events_cap: int
    bucket: NoiseTerm  # per cell per bucket (per device under the local model)
    count: NoiseTerm | None  # aggregate: per cell count entry
    total: NoiseTerm  # per cell sum


@cache
def policy_noise(local: bool) -> PolicyNoise:
    """The latency histogram's noise under pilot.yaml (local) or default.yaml (aggregate)."""
    policy = load_policy(PILOT_POLICY_PATH if local else DEFAULT_POLICY_PATH)
    signal = policy.signals[LATENCY]
    assert isinstance(signal, HistogramSignal)
    edges = tuple(signal.buckets)
    if local:
        split = epsilon_split(signal)
        bound = signal.max_events_per_window
        return PolicyNoise(
            local=True,
            edges=edges,
            events_cap=bound,
            bucket=NoiseTerm(Mechanism.DISCRETE_LAPLACE, 2 * bound / split.cells, 1),
            count=None,
            total=NoiseTerm(Mechanism.LAPLACE, 2 * signal.sum_cap / split.sums, 1),
        )
    tasks = tasks_of(policy)

    def term(part: str) -> NoiseTerm:
        task = tasks[f"{LATENCY}/{part}"]
        return NoiseTerm(
            Mechanism.DISCRETE_LAPLACE, task.sensitivity / task.epsilon, 2, task.resolution
        )

    return PolicyNoise(
        local=False,
        edges=edges,
        events_cap=signal.cell_events_cap,
        bucket=term("buckets"),
        count=term("counts"),
        total=term("sums"),
    )


@cache
def _kept_events_per_device(events_cap: int, samples: int = 200_000) -> tuple[Array, Array]:
    """Mean and variance, per device-day, of each (route, model) cell's kept events."""
    rng = np.random.default_rng(20260302)
    rate = rng.gamma(1.5, 14.0, samples) * (_DAY / SIX_HOURS)
    mix = rng.dirichlet((4.0, 2.0, 3.0), samples)
    canary = rng.random(samples) < CANARY_SHARE
    per_route = rng.multinomial(rng.poisson(rate), mix)
    total = per_route.sum(axis=1)
    factor = np.minimum(1.0, events_cap / np.maximum(total, 1))
    kept = np.floor(per_route * factor[:, None])
    cells = np.concatenate([kept * ~canary[:, None], kept * canary[:, None]], axis=1)
    return cells.mean(axis=0), cells.var(axis=0)


def bucket_probabilities(median: float, edges: Sequence[float]) -> Array:
    cdf = norm.cdf((np.log(np.asarray(edges)) - math.log(median)) / _SIGMA)
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))


def _lognormal_moments(median: float) -> tuple[float, float]:
    mean = median * math.exp(_SIGMA**2 / 2)
    var = (math.exp(_SIGMA**2) - 1.0) * mean**2
    return mean, var


def _discrete_laplace(rng: np.random.Generator, scale: float, size: int) -> Array:
    p = -math.expm1(-1.0 / scale)
    return (rng.geometric(p, size) - rng.geometric(p, size)).astype(np.float64)


def _noise(rng: np.random.Generator, term: NoiseTerm, cells: int, devices: int, size: int) -> Array:
    """One figure's noise over `cells` cells (and `devices` devices, locally)."""
    if devices > 1:
        sd = math.sqrt(term.count * devices * cells * noise_variance(term.mechanism, term.scale))
        return rng.normal(0.0, sd, size) * term.resolution
    out = np.zeros(size)
    for _ in range(term.count * cells):
        if term.mechanism is Mechanism.DISCRETE_LAPLACE:
            out += _discrete_laplace(rng, term.scale, size)
        else:
            out += rng.laplace(0.0, term.scale, size)
    return out * term.resolution


def simulate_side(
    rng: np.random.Generator,
    cells: Sequence[Cell],
    *,
    devices: int,
    local: bool,
    slowdown: dict[Cell, float] | None = None,
) -> HistogramSide:
    """One day of `devices` devices, the cells `cells` added, as a drift test reads them.

    `slowdown` multiplies the latency of a cell's events (1.2: 20% slower).
    """
    pn = policy_noise(local)
    mean, var = _kept_events_per_device(pn.events_cap)
    index = {
        (r, m): j * len(ROUTES) + i for j, m in enumerate(MODELS) for i, r in enumerate(ROUTES)
    }
    n_buckets = len(pn.edges) + 1
    buckets = np.zeros(n_buckets)
    total = 0.0
    events = 0
    for cell in cells:
        if cell not in index:  # the `other` cells: released, never used
            continue
        j = index[cell]
        k = max(round(rng.normal(devices * mean[j], math.sqrt(devices * var[j]))), 0)
        median = LATENCY_MEDIAN[cell[0]] * (slowdown or {}).get(cell, 1.0)
        buckets += rng.multinomial(k, bucket_probabilities(median, pn.edges))
        m, v = _lognormal_moments(median)
        total += rng.normal(k * m, math.sqrt(k * v)) if k else 0.0
        events += k
    n_cells = len(cells)
    per_device = devices if local else 1
    buckets = buckets + _noise(rng, pn.bucket, n_cells, per_device, n_buckets)
    total += float(_noise(rng, pn.total, n_cells, per_device, 1)[0])
    uppers: tuple[float | None, ...] = (*pn.edges, None)
    if local:
        shared = NoiseTerm(pn.bucket.mechanism, pn.bucket.scale, devices * n_cells)
        return HistogramSide(
            buckets=buckets,
            uppers=uppers,
            shared_terms=((shared,),) * n_buckets,
            own_terms=((),) * n_buckets,
            events=float(buckets.sum()),
            events_terms=(),
            total=total,
            total_terms=(NoiseTerm(pn.total.mechanism, pn.total.scale, devices * n_cells),),
            devices=devices,
        )
    assert pn.count is not None
    count = events + float(_noise(rng, pn.count, n_cells, 1, 1)[0])

    def scaled(term: NoiseTerm) -> tuple[NoiseTerm]:
        return (NoiseTerm(term.mechanism, term.scale, term.count * n_cells, term.resolution),)

    return HistogramSide(
        buckets=buckets,
        uppers=uppers,
        shared_terms=((),) * n_buckets,
        own_terms=(scaled(pn.bucket),) * n_buckets,
        events=count,
        events_terms=scaled(pn.count),
        total=total,
        total_terms=scaled(pn.total),
        devices=devices,
    )


def route_cells(route: str) -> list[Cell]:
    """Every cell of a route, `other` model included, as `--where route=...` reads."""
    return [(route, m) for m in (*MODELS, "other")]
