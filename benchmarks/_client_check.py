"""The bulk path checked against the client and Prio3, on one day of 1,000 devices.

Every device's day goes through the client's own functions: `counter_measurement`,
`clamp_histogram` and `histogram_measurements` (aggregate model), `release_counter` and
`release_histogram` (local model). Checked: the numpy ports of the histogram clamping
equal the client's on every device; the local releases' noise scales are the ones the
bulk path uses and their noise has the variance the noise model says; and the real
Prio3 path (shard, both verify_init, the verifier message, both verify_next, aggregate,
unshard) gives exactly the sum of the clamped measurements, which justifies the bulk
path's shortcut (the fleet sum of the clamped measurements, plus noise).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analytics._noise import noise_variance
from benchmarks._clamping import clamp_aggregate, clamp_local, quantize
from benchmarks._fleet import LATENCY, SLOWDOWN, TOKENS, HistogramDay, Layout, draw_day, fleet_of
from benchmarks._releases import local_scales, sum_noise
from benchmarks._types import FloatArray, IntArray
from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import (
    Release,
    TrueCounter,
    TrueHistogram,
    release_counter,
    release_histogram,
)
from client._shares import clamp_histogram, counter_measurement, histogram_measurements, task_vdaf
from policies import (
    AggregationTask,
    CounterSignal,
    HistogramSignal,
    Policy,
    aggregation_tasks,
    task_context,
)
from schemas import CounterAggregate, HistogramAggregate, Mechanism

__all__ = ["check_clients"]


def _prio3_sum(task: AggregationTask, policy_hash: str, vectors: Sequence[list[int]]) -> list[int]:
    """Every vector through the binding (shard, both verify_init, the verifier message,
    both verify_next, aggregate, unshard): what the collector would see without noise."""
    vdaf = task_vdaf(task.length, task.bits, task.chunk_length)
    ctx, key = task_context(policy_hash, task.id), secrets.token_bytes(vdaf.verify_key_size)
    leader, helper = [], []
    for vector in vectors:
        nonce = secrets.token_bytes(vdaf.nonce_size)
        public, l_share, h_share = vdaf.shard(ctx, vector, nonce)
        l_state, l_verifier = vdaf.verify_init(key, ctx, 0, nonce, public, l_share)
        h_state, h_verifier = vdaf.verify_init(key, ctx, 1, nonce, public, h_share)
        message = vdaf.verifier_shares_to_message(ctx, l_verifier, h_verifier)
        leader.append(vdaf.verify_next(ctx, 0, l_state, message))
        helper.append(vdaf.verify_next(ctx, 1, h_state, message))
    return vdaf.unshard(vdaf.aggregate(0, leader), vdaf.aggregate(1, helper), len(vectors))


class _Residuals:
    """Local noise draws (release - clamped truth) by kind, each over its own variance."""

    def __init__(self) -> None:
        self.squares: dict[str, list[float]] = {}

    def add(self, kind: str, values: Sequence[float], mechanism: Mechanism, scale: float) -> None:
        variance = noise_variance(mechanism, scale)
        self.squares.setdefault(kind, []).extend(x * x / variance for x in values)

    def ratios(self) -> dict[str, tuple[float, float]]:
        """Measured / analytic variance and its standard error (from the squares' spread)."""
        out = {}
        for kind, squares in self.squares.items():
            x = np.asarray(squares)
            out[kind] = (float(x.mean()), float(x.std()) / math.sqrt(len(x)))
        return out


def _local_scales_of(release: Release) -> set[tuple[float, ...]]:
    out: set[tuple[float, ...]] = set()
    for a in release.aggregates:
        if isinstance(a, CounterAggregate):
            out.add((a.noise.scale,))
        elif isinstance(a, HistogramAggregate):
            out.add((a.count_noise.scale, sum_noise(a).scale))
    return out


def _check_counters(
    local: Policy, layout: Layout, raws: dict[str, IntArray], check: _Check
) -> None:
    for name, raw in raws.items():
        signal, local_signal = layout.counter_signal(name), local.signals[name]
        assert isinstance(local_signal, CounterSignal)
        domain, scale = CellDomain(signal.attributes), check.scales[name]
        for row in raw.tolist():
            measured = counter_measurement(signal, row)
            check.vectors[f"{name}/cells"].append(measured)
            release = release_counter(name, local_signal, domain, row)
            truth = [t.value for t in release.truth if isinstance(t, TrueCounter)]
            if truth != measured:
                check.problems.append(f"{name}: local clamping differs from the aggregate's")
            if _local_scales_of(release) != {(scale,)}:
                check.problems.append(f"{name}: release scales differ from the bulk path's")
            noisy = [a.value for a in release.aggregates if isinstance(a, CounterAggregate)]
            draws = [x - t for x, t in zip(noisy, truth, strict=True)]
            check.residuals.add("counter cells", draws, Mechanism.DISCRETE_LAPLACE, scale)


def _check_histogram(
    name: str, policy: Policy, local: Policy, h: HistogramDay, check: _Check
) -> None:
    signal, local_signal = h.signal, local.signals[name]
    assert isinstance(local_signal, HistogramSignal)
    domain, n_buckets = CellDomain(signal.attributes), len(signal.buckets) + 1
    scales = (check.scales[f"{name}/counts"], check.scales[f"{name}/sums"])
    _, sums, _ = h.per_cell()
    flat = h.buckets(np.arange(len(sums)))
    agg_port, local_port = clamp_aggregate(signal, flat, sums), clamp_local(signal, flat, sums)
    # Within both bounds, clamping is the identity (the bulk path's shortcut).
    within = (flat.sum(axis=1) <= signal.max_events_per_window) & (
        sums.sum(axis=1) <= signal.sum_cap * (1 - 1e-9)
    )
    tasks = {t.part: t for t in aggregation_tasks(policy).values() if t.signal == name}
    for r in range(len(sums)):
        snaps = [
            HistogramSnapshot(flat[r, c * n_buckets : (c + 1) * n_buckets].tolist(), sums[r, c])
            for c in range(domain.size)
        ]
        clamped = clamp_histogram(signal, snaps)
        counts = [x for cell in clamped.counts for x in cell]
        _compare(check.problems, f"{name} aggregate", agg_port, r, counts, clamped.sums)
        if within[r]:
            _compare(check.problems, f"{name} identity", (flat, sums), r, counts, clamped.sums)
        for task_id, vector in histogram_measurements(list(tasks.values()), clamped).items():
            check.vectors[task_id].append(vector)
        release = release_histogram(name, local_signal, domain, snaps)
        truth = [t for t in release.truth if isinstance(t, TrueHistogram)]
        counts = [x for t in truth for x in t.counts]
        _compare(check.problems, f"{name} local", local_port, r, counts, [t.sum for t in truth])
        if within[r]:
            _compare(
                check.problems, f"{name} identity", (flat, sums), r, counts, [t.sum for t in truth]
            )
        if _local_scales_of(release) != {scales}:
            check.problems.append(f"{name}: release scales differ from the bulk path's")
        noisy = [a for a in release.aggregates if isinstance(a, HistogramAggregate)]
        for a, t in zip(noisy, truth, strict=True):
            buckets = [x - y for x, y in zip(a.counts, t.counts, strict=True)]
            check.residuals.add("histogram buckets", buckets, Mechanism.DISCRETE_LAPLACE, scales[0])
            check.residuals.add(
                f"{name} sums", [(a.sum or 0.0) - t.sum], Mechanism.LAPLACE, scales[1]
            )
    # The port of the random rounding: the same fleet sum, up to the rounding's spread.
    task = tasks["sums"]
    units = agg_port[1] / task.resolution
    spread = math.sqrt(2 * float(np.sum((units % 1) * (1 - units % 1))))
    ported = quantize(agg_port[1], task, np.random.default_rng(0)).sum()
    client = int(np.asarray(check.vectors[task.id]).sum())
    if abs(int(ported) - client) > 6 * spread + 1:
        check.problems.append(f"{task.id}: quantised sums {ported} (port) vs {client}")


@dataclass
class _Check:
    scales: dict[str, float]
    vectors: dict[str, list[list[int]]]
    residuals: _Residuals
    problems: list[str]


def check_clients(
    policy: Policy, local: Policy, layout: Layout, devices: int, seed: int
) -> tuple[list[str], list[str]]:
    """(report lines, problems) of running the client's functions and Prio3 on one day
    of every device of a 1,000-device fleet, against the bulk path's."""
    fleet = fleet_of(devices, policy.window_seconds)
    day = draw_day(fleet, np.random.default_rng((seed, 0, 0)))
    tasks = aggregation_tasks(policy)
    check = _Check(local_scales(local), {t: [] for t in tasks}, _Residuals(), [])
    _check_counters(local, layout, layout.counter_rows(fleet, day), check)
    _check_histogram(LATENCY, policy, local, layout.latency_day(fleet, day, SLOWDOWN), check)
    _check_histogram(TOKENS, policy, local, layout.tokens_day(day), check)
    for task_id, task in tasks.items():
        expected = np.asarray(check.vectors[task_id]).sum(axis=0).tolist()
        if _prio3_sum(task, policy.content_hash, check.vectors[task_id]) != expected:
            check.problems.append(f"{task_id}: the Prio3 aggregate differs from the clamped sum")
    reports = sum(len(v) for v in check.vectors.values())
    ratios = check.residuals.ratios()
    for kind, (ratio, se) in ratios.items():
        if abs(ratio - 1) > 5 * se:
            check.problems.append(f"local {kind}: noise variance {ratio:.3f} x the analytic")
    lines = [
        f"check, {devices:,} devices x 1 day, {'PASS' if not check.problems else 'FAIL'}: "
        f"the Prio3 path ({len(tasks)} tasks, {reports:,} reports: shard, verify_init x2, "
        "message, verify_next x2, aggregate, unshard) gives exactly the sum of the client's "
        "clamped measurements; the numpy ports equal the client's clamp_histogram and "
        "release_histogram clamping on every device (counts exactly, sums to 1e-12), which "
        "is the identity within the bounds; the ported rounding gives the client's sum "
        "within its spread; the local releases' scales are the bulk path's",
        "  local noise variance, measured / analytic (± s.e.): "
        + ", ".join(f"{k} {v:.3f} (± {se:.3f})" for k, (v, se) in ratios.items()),
    ]
    return lines, check.problems


def _compare(
    problems: list[str],
    what: str,
    ported: tuple[IntArray, FloatArray],
    row: int,
    counts: list[int],
    sums: Sequence[float],
) -> None:
    if ported[0][row].tolist() != counts:
        problems.append(f"{what}: device {row}'s clamped counts differ from the client's")
    if not np.allclose(ported[1][row], sums, rtol=1e-12, atol=1e-9):
        problems.append(f"{what}: device {row}'s clamped sums differ from the client's")
