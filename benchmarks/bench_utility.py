"""Utility of the DP release: relative error of fleet totals and of mean latency.

Devices: the demo's simulated fleet (`analytics._simulation`), 1,000 and 10,000 of them,
one six-hour window. Signals: the default policy's `inference.requests` (counter,
M = 40) and `gen_ai.client.operation.duration` (histogram, N = 40, values in [0, 10] s,
a device's window sum capped at the policy's `max_sum_per_window`) at epsilon 0.25 per
window, i.e. 1 per device per day with four windows a day, with the
policy's `total_share` (0.5) going to the scalar totals.

Noise comes from the client's own release path: every device's window goes through
`release_counter` / `release_histogram` once (its clamped truth and one real draw);
further trials draw from the very OpenDP measurements those functions use (same
mechanism, d_in and epsilon, so the same scale: checked), one vector per trial, because
the HTTP pipeline would only add minutes. Ten disjoint groups of the 10,000 devices
give the 1,000-device figures.

Relative error is RMS(estimate - truth) / truth over trials. The analytic figure is the
mechanism's: sqrt(sum of the devices' noise variances) / truth (`analytics._noise`). The
per-cell column is the analytic error of summing every cell's release instead (the
mechanism before scalar totals existed). Target: measured within 10% of analytic (the
Monte Carlo error of the measurement itself is printed; a miss counts only if it is
more than 3 of those away). The mean's analytic figure is the delta method's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from analytics._noise import noise_variance
from analytics._simulation import FleetSpec, device_profiles, simulate_window
from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import (
    counter_measurement,
    epsilon_split,
    release_counter,
    release_histogram,
    sum_measurement,
)
from policies import CounterSignal, HistogramSignal, load_policy
from schemas import CounterAggregate, HistogramAggregate, TotalAggregate

DEVICES = 10_000
GROUPS = 10  # 1,000-device fleets
TRIALS = 40  # vector trials after the release-path trial
EPSILON_PER_DAY = 1.0
TARGET = 0.10

_REQUESTS = "inference.requests"
_LATENCY = "gen_ai.client.operation.duration"


@dataclass
class _Quantity:
    """Per-device clamped truths and noise draws (trials x devices) of one scalar total."""

    name: str
    truth: np.ndarray
    draws: np.ndarray
    variance: float  # of one device's draw
    per_cell_variance: float  # of one device's per-cell releases, summed over cells


def _signals() -> tuple[CounterSignal, HistogramSignal]:
    policy = load_policy()
    per_window = EPSILON_PER_DAY * policy.window_seconds / 86_400
    requests = policy.signals[_REQUESTS]
    latency = policy.signals[_LATENCY]
    assert isinstance(requests, CounterSignal)
    assert isinstance(latency, HistogramSignal)
    return (
        requests.model_copy(update={"epsilon": per_window}),
        latency.model_copy(update={"epsilon": per_window}),
    )


def _release_path(
    requests: CounterSignal, latency: HistogramSignal
) -> tuple[list[list[TotalAggregate]], list[list[float]], float, float]:
    """Every device's window through the real release functions.

    Returns per device its total aggregates and truths, and the per-cell noise
    variances (counter cells, histogram buckets + sums) summed over cells.
    """
    spec = FleetSpec(devices=DEVICES, windows=1, seed=5)
    r_domain, l_domain = CellDomain(requests.attributes), CellDomain(latency.attributes)
    n_buckets = len(latency.buckets) + 1
    totals: list[list[TotalAggregate]] = []
    truths: list[list[float]] = []
    cell_var_r = cell_var_l = 0.0
    for profile in device_profiles(spec):
        counts = [0] * r_domain.size
        snaps = [[0] * n_buckets for _ in range(l_domain.size)]
        sums = [0.0] * l_domain.size
        for e in simulate_window(profile, 0, spec.seed):
            counts[r_domain.resolve({"route": e.route, "model": e.model})[0]] += 1
            cell = l_domain.resolve({"route": e.route, "model": e.model})[0]
            snaps[cell][int(np.searchsorted(latency.buckets, e.latency_s))] += 1
            sums[cell] += min(max(e.latency_s, latency.value_range[0]), latency.value_range[1])
        r = release_counter(_REQUESTS, requests, r_domain, counts)
        h = release_histogram(
            _LATENCY,
            latency,
            l_domain,
            [HistogramSnapshot(c, s) for c, s in zip(snaps, sums, strict=True)],
        )
        device_totals = [a for a in [*r.aggregates, *h.aggregates] if isinstance(a, TotalAggregate)]
        totals.append(device_totals)
        truths.append([t.value for t in [*r.truth, *h.truth] if hasattr(t, "measure")])  # type: ignore[union-attr]
        if not cell_var_r:
            cell_var_r = sum(
                noise_variance(a.noise.mechanism, a.noise.scale)
                for a in r.aggregates
                if isinstance(a, CounterAggregate)
            )
            cell_var_l = sum(
                len(a.counts) * noise_variance(a.count_noise.mechanism, a.count_noise.scale)
                for a in h.aggregates
                if isinstance(a, HistogramAggregate)
            )
    return totals, truths, cell_var_r, cell_var_l


def _quantities() -> list[_Quantity]:
    requests, latency = _signals()
    totals, truths, cell_var_r, cell_var_l = _release_path(requests, latency)
    names = ["requests total", "latency count", "latency sum (s)"]
    truth = np.array(truths, dtype=float)  # devices x 3
    first = np.array([[a.value for a in row] for row in totals])  # trial 0: the real path
    noise = [row for row in totals[0]]
    # The measurements the release functions use, for vectors of all devices at once.
    r_split, l_split = epsilon_split(requests), epsilon_split(latency)
    n_max = latency.max_events_per_window
    meas = [
        counter_measurement(DEVICES, requests.max_per_window, r_split.total),
        counter_measurement(DEVICES, n_max, l_split.total),
        # The total sum lies in [0, cap] (values are non-negative): diameter `cap`.
        sum_measurement(DEVICES, latency.sum_cap, l_split.total_sum),
    ]
    out = []
    for q, (name, (m, scale)) in enumerate(zip(names, meas, strict=True)):
        spec = noise[q].noise
        if not math.isclose(scale, spec.scale, rel_tol=1e-12):
            raise AssertionError(f"{name}: vector scale {scale} != release scale {spec.scale}")
        draws = [first[:, q] - truth[:, q]]
        zeros: list[float] | list[int] = [0.0] * DEVICES if q == 2 else [0] * DEVICES
        draws += [np.asarray(m(zeros), dtype=float) for _ in range(TRIALS)]
        per_cell = {0: cell_var_r, 1: cell_var_l}.get(q, math.nan)
        out.append(
            _Quantity(
                name,
                truth[:, q],
                np.array(draws),
                noise_variance(spec.mechanism, spec.scale),
                per_cell,
            )
        )
    return out


def _relative(q: _Quantity, group: slice) -> tuple[float, float, float, float]:
    """(measured, its Monte Carlo std error, analytic, per-cell analytic) for one fleet."""
    truth = float(q.truth[group].sum())
    errors = q.draws[:, group].sum(axis=1)
    mse = float(np.mean(errors**2))
    measured = math.sqrt(mse) / truth
    # sd of the RMS estimate: sqrt(var(err^2)/T) / (2 RMS).
    se = math.sqrt(float(np.var(errors**2)) / len(errors)) / (2 * math.sqrt(mse)) / truth
    n = group.stop - group.start
    analytic = math.sqrt(n * q.variance) / truth
    per_cell = math.sqrt(n * q.per_cell_variance) / truth
    return measured, se, analytic, per_cell


def _mean_latency(count: _Quantity, total: _Quantity, group: slice) -> tuple[float, float]:
    """(measured RMS relative error, delta-method analytic) of the fleet mean."""
    c, s = count.truth[group].sum(), total.truth[group].sum()
    est = (s + total.draws[:, group].sum(axis=1)) / (c + count.draws[:, group].sum(axis=1))
    measured = math.sqrt(float(np.mean((est - s / c) ** 2))) / (s / c)
    n = group.stop - group.start
    analytic = math.sqrt(n * total.variance / s**2 + n * count.variance / c**2)
    return measured, analytic


def main() -> int:
    """Print the table; non-zero if a total misses the target by more than 3 Monte Carlo SEs."""
    started = time.monotonic()
    quantities = _quantities()
    print(
        f"epsilon {EPSILON_PER_DAY:g}/device/day (0.25 per 6-hour window), one window; "
        f"{TRIALS + 1} trials at 10,000 devices, {GROUPS * (TRIALS + 1)} at 1,000"
    )
    print(f"{'quantity':<18}{'devices':>8}{'measured':>11}{'± MC':>8}{'analytic':>10}"
          f"{'ratio':>7}{'per-cell':>10}  target")  # fmt: skip
    missed = 0
    for devices, groups in ((1_000, GROUPS), (DEVICES, 1)):
        size = DEVICES // groups
        for q in quantities:
            rows = [_relative(q, slice(g * size, (g + 1) * size)) for g in range(groups)]
            measured = math.sqrt(np.mean([r[0] ** 2 for r in rows]))
            se = math.sqrt(np.mean([r[1] ** 2 for r in rows])) / math.sqrt(groups)
            analytic = math.sqrt(np.mean([r[2] ** 2 for r in rows]))
            per_cell = math.sqrt(np.mean([r[3] ** 2 for r in rows]))
            ratio = measured / analytic
            ok = abs(ratio - 1.0) <= TARGET or abs(measured - analytic) <= 3 * se
            missed += int(not ok)
            cell = "-" if math.isnan(per_cell) else f"{per_cell:.1%}"
            print(
                f"{q.name:<18}{devices:>8,}{measured:>11.1%}{se:>8.1%}{analytic:>10.1%}"
                f"{ratio:>7.2f}{cell:>10}  {'ok' if ok else 'MISSED'}"
            )
        means = [
            _mean_latency(quantities[1], quantities[2], slice(g * size, (g + 1) * size))
            for g in range(groups)
        ]
        print(
            f"{'mean latency':<18}{devices:>8,}"
            f"{math.sqrt(np.mean([m[0] ** 2 for m in means])):>11.1%}{'':>8}"
            f"{math.sqrt(np.mean([m[1] ** 2 for m in means])):>10.1%}   (delta method)"
        )
    print(
        "A day's total (4 windows) has half the relative error of one window's; error "
        "falls as 1/sqrt(devices). See docs/privacy.md for the formula."
    )
    print(f"({time.monotonic() - started:.0f} s)")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
