"""Each model's release of a simulated fleet's day, and the law of its noise.

- aggregate: per task of the policy (`policies.aggregation_tasks`: its part's epsilon,
  its bits, its resolution), the fleet sum of the clamped measurements plus two discrete
  Laplace draws per vector entry (leader and helper) at the task's scale, from OpenDP
  with the aggregators' construction (`make_laplace` on an i64 vector, the smallest
  scale whose map at d_in = the task's sensitivity, 2 x its bound or its bound for a
  total, is at most its epsilon). Parts: a counter's `cells` and scalar `total`; a
  histogram's per-cell `counts` and `sums` (at the cell caps; a policy without `counts`
  gets them from its `buckets`, one cell's count the sum of its buckets) and scalar
  `total_events` and `total_sum` (at the totals' bounds). A part the policy does not
  release is absent;
- local: the client's `release_counter` / `release_histogram` are the mechanism: each
  device adds discrete Laplace noise to every count (a histogram: every bucket) and
  Laplace noise to every cell's sum. An OpenDP draw costs 6 to 19 us, so the sum of a
  fleet's draws is drawn at once from its exact law (discrete Laplace is the difference
  of two geometrics, so a sum of D of them is a difference of two negative binomials;
  Laplace, of two gammas) at the scales the client's functions report (`local_scales`;
  `_client_check` runs those functions on every device of a 1,000-device day).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import opendp.prelude as dp

from analytics._noise import noise_variance
from benchmarks._fleet import ERRORS, EXCEPTIONS, LATENCY, REQUESTS, TOKENS
from benchmarks._types import FloatArray, IntArray
from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import release_counter, release_histogram
from policies import AggregationTask, CounterSignal, HistogramSignal, Policy, aggregation_tasks
from schemas import CounterAggregate, HistogramAggregate, Mechanism, NoiseSpec

__all__ = [
    "CANARY_PARTS",
    "COUNTERS",
    "FIGURE_PARTS",
    "HISTOGRAMS",
    "Part",
    "aggregate_parts",
    "local_parts",
    "local_scales",
    "sum_noise",
]

dp.enable_features("contrib")

COUNTERS = {REQUESTS: "requests", ERRORS: "errors", EXCEPTIONS: "exceptions"}

HISTOGRAMS = {"latency": LATENCY, "latency_h0": LATENCY, "tokens": TOKENS}

# Part names: a counter's short name (its cells) and `<short>.total`; per histogram
# prefix `<prefix>.counts` and `<prefix>.sums` (per cell), `<prefix>.total_events` and
# `<prefix>.total_sum` (one entry).
FIGURE_PARTS = frozenset(
    [
        *COUNTERS.values(),
        *(f"{short}.total" for short in COUNTERS.values()),
        *(
            f"{h}.{m}"
            for h in ("latency", "tokens")
            for m in ("counts", "sums", "total_events", "total_sum")
        ),
    ]
)

CANARY_PARTS = frozenset(f"{h}.{m}" for h in ("latency", "latency_h0") for m in ("counts", "sums"))


@dataclass(frozen=True, slots=True)
class Part:
    """One released vector per trial: values (trials, cells), the clamped input the noise
    was added to, and the noise of one entry: `unit` x the sum of `draws` independent
    draws of `mechanism` at `scale`."""

    values: FloatArray
    clamped: FloatArray
    mechanism: Mechanism
    scale: float
    draws: int
    unit: float = 1.0

    @property
    def variance(self) -> float:
        return self.draws * self.unit**2 * noise_variance(self.mechanism, self.scale)

    def log_cf(self, v: FloatArray) -> FloatArray:
        """log E[exp(i v N)] of one entry's noise N (real: the noise is symmetric)."""
        x = v * self.unit
        if self.mechanism is Mechanism.LAPLACE:
            out: FloatArray = -self.draws * np.log1p((self.scale * x) ** 2)
            return out
        # Discrete Laplace: (1-a)^2 / (1 - 2a cos x + a^2), a = e^(-1/scale), written stably.
        a, one_minus_a = math.exp(-1 / self.scale), -math.expm1(-1 / self.scale)
        out = -self.draws * np.log1p(4 * a * np.sin(x / 2) ** 2 / one_minus_a**2)
        return out


@functools.lru_cache(maxsize=64)
def _task_scale(length: int, sensitivity: int, epsilon: float) -> float:
    """The aggregators' scale: OpenDP's smallest whose map at the sensitivity <= epsilon."""
    space = dp.vector_domain(dp.atom_domain(T="i64"), size=length), dp.l1_distance(T="i64")

    def make(scale: float) -> Any:
        return dp.m.make_laplace(*space, scale=scale)

    scale = float(dp.binary_search_param(make, d_in=sensitivity, d_out=epsilon))
    if not float(make(scale).map(sensitivity)) <= epsilon:
        raise AssertionError(f"OpenDP maps scale {scale} above epsilon {epsilon}")
    return scale


def _aggregator_noise(task: AggregationTask, scale: float, trials: int) -> IntArray:
    """The leader's plus the helper's draw, per trial and entry: (trials, length)."""
    n = trials * 2 * task.length
    space = dp.vector_domain(dp.atom_domain(T="i64"), size=n), dp.l1_distance(T="i64")
    meas: Any = dp.m.make_laplace(*space, scale=scale)
    # The same mechanism at the same scale, on all trials at once: the same map.
    if not float(meas.map(task.sensitivity)) <= task.epsilon:
        raise AssertionError(f"{task.id}: the bulk measurement's map exceeds epsilon")
    draws = np.asarray(meas([0] * n), dtype=np.int64).reshape(trials, 2, task.length)
    out: IntArray = draws.sum(axis=1)
    return out


def sum_noise(a: HistogramAggregate) -> NoiseSpec:
    """The noise of a local histogram release's sum (which the local model always has)."""
    if a.sum is None or a.sum_noise is None:
        raise AssertionError(f"{a.signal}: a local histogram release without its sum")
    return a.sum_noise


def local_scales(local: Policy) -> dict[str, float]:
    """The scales the client's release functions use (read off a release of empty data)."""
    out: dict[str, float] = {}
    for name, signal in local.signals.items():
        domain = CellDomain(signal.attributes)
        if isinstance(signal, CounterSignal):
            c = release_counter(name, signal, domain, [0] * domain.size).aggregates[0]
            assert isinstance(c, CounterAggregate)
            out[name] = c.noise.scale
        else:
            empty = [HistogramSnapshot([0] * (len(signal.buckets) + 1), 0.0)] * domain.size
            h = release_histogram(name, signal, domain, empty).aggregates[0]
            assert isinstance(h, HistogramAggregate)
            out[f"{name}/counts"], out[f"{name}/sums"] = h.count_noise.scale, sum_noise(h).scale
    return out


def _fleet_discrete_laplace(
    rng: np.random.Generator, draws: int, scale: float, shape: tuple[int, ...]
) -> FloatArray:
    """The sum of `draws` discrete Laplace(scale) variables, `shape` times, exactly."""
    p = -math.expm1(-1.0 / scale)  # a geometric's success probability, 1 - e^(-1/scale)
    out: FloatArray = (
        rng.negative_binomial(draws, p, shape) - rng.negative_binomial(draws, p, shape)
    ).astype(float)
    return out


def _fleet_laplace(
    rng: np.random.Generator, draws: int, scale: float, shape: tuple[int, ...]
) -> FloatArray:
    """The sum of `draws` Laplace(scale) variables, `shape` times, exactly."""
    out: FloatArray = rng.gamma(draws, scale, shape) - rng.gamma(draws, scale, shape)
    return out


def aggregate_parts(
    policy: Policy, sums: dict[str, FloatArray], wanted: Collection[str] = FIGURE_PARTS
) -> dict[str, Part]:
    """Aggregate-model releases of each trial in `sums` (rows): of the parts `wanted`,
    those the policy's tasks release, each at its task's epsilon and sensitivity."""
    tasks = aggregation_tasks(policy)
    trials = len(sums["latency.events"])
    # A counter's total task: the clamped count over all cells (counter_measurement's sum).
    inputs = sums | {
        f"{name}.clamped_total": sums[f"{name}.clamped"].sum(axis=1, keepdims=True)
        for name in COUNTERS
    }
    out: dict[str, Part] = {}

    def add(part: str, key: str, task_id: str, unit: float | None = None, summed: int = 1) -> bool:
        """`part` from the input `inputs[key]` and the task `task_id`, if the policy has
        it. unit: of one entry (default: the task's resolution); summed > 1: one entry
        of the part is the sum of `summed` consecutive entries of the task's vector."""
        task = tasks.get(task_id)
        if part not in wanted or task is None:
            return False
        clamped = inputs[key]
        if clamped.shape[1] * summed != task.length:
            raise AssertionError(f"{task_id}: {task.length} entries, its input {clamped.shape}")
        scale = _task_scale(task.length, task.sensitivity, task.epsilon)
        noise = _aggregator_noise(task, scale, trials)
        if summed > 1:
            noise = noise.reshape(trials, -1, summed).sum(axis=2)
        u = task.resolution if unit is None else unit
        dl = Mechanism.DISCRETE_LAPLACE
        out[part] = Part((clamped + noise) * u, clamped * u, dl, scale, 2 * summed, u)
        return True

    for name, short in COUNTERS.items():
        add(short, f"{name}.clamped", f"{name}/cells")
        add(f"{short}.total", f"{name}.clamped_total", f"{name}/total")
    for prefix, name in HISTOGRAMS.items():
        if not add(f"{prefix}.counts", f"{prefix}.agg_counts", f"{name}/counts"):
            signal = policy.signals[name]
            assert isinstance(signal, HistogramSignal)
            buckets = len(signal.buckets) + 1
            add(f"{prefix}.counts", f"{prefix}.agg_counts", f"{name}/buckets", 1.0, buckets)
        add(f"{prefix}.sums", f"{prefix}.agg_units", f"{name}/sums")
        add(f"{prefix}.total_events", f"{prefix}.agg_total_events", f"{name}/total_events")
        add(f"{prefix}.total_sum", f"{prefix}.agg_total_units", f"{name}/total_sum")
    return out


def local_parts(
    local: Policy,
    sums: dict[str, FloatArray],
    devices: int,
    rng: np.random.Generator,
    wanted: Collection[str] = FIGURE_PARTS,
) -> dict[str, Part]:
    """Local-model releases of each trial in `sums` (rows): the fleet's sum of per-device
    releases, of the parts `wanted` the per-cell ones (cells; counts and sums), as the
    local policy releases no scalar total (`total_share` 0: a fleet total is its cells
    added)."""
    scales = local_scales(local)
    dl, lap = Mechanism.DISCRETE_LAPLACE, Mechanism.LAPLACE
    out: dict[str, Part] = {}
    for name, short in COUNTERS.items():
        counter = local.signals[name]
        assert isinstance(counter, CounterSignal)
        if counter.total_share:
            raise AssertionError(f"{name}: a local total release is not modelled")
        if short not in wanted:
            continue
        clamped, t = sums[f"{name}.clamped"], scales[name]
        noise = _fleet_discrete_laplace(rng, devices, t, clamped.shape)
        out[short] = Part(clamped + noise, clamped, dl, t, devices)
    for prefix, name in HISTOGRAMS.items():
        signal = local.signals[name]
        assert isinstance(signal, HistogramSignal)
        if signal.total_share:
            raise AssertionError(f"{name}: a local total release is not modelled")
        if f"{prefix}.counts" in wanted:
            draws = devices * (len(signal.buckets) + 1)  # a cell's count: its buckets' sum
            events, t = sums[f"{prefix}.local_counts"], scales[f"{name}/counts"]
            noise = _fleet_discrete_laplace(rng, draws, t, events.shape)
            out[f"{prefix}.counts"] = Part(events + noise, events, dl, t, draws)
        if f"{prefix}.sums" in wanted:
            total, b = sums[f"{prefix}.local_sums"], scales[f"{name}/sums"]
            noise = _fleet_laplace(rng, devices, b, total.shape)
            out[f"{prefix}.sums"] = Part(total + noise, total, lap, b, devices)
    return out
