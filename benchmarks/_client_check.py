"""The bulk path checked against the client and Prio3, on one day of 1,000 devices.

Few device-days reach the totals' bounds (none of those 1,000), so the day's 50 heaviest
are added again with every event three times (counts and sums), past them.

Every device's day goes through the client's own functions: `counter_measurement`,
`clamp_histogram` (the per-cell parts, at the cell caps), `histogram_totals` (the
totals, at their bounds) and `histogram_measurements` (aggregate model),
`release_counter` and `release_histogram` (local model). Checked: the numpy ports of the
histogram clamping equal the client's on every device (per-cell parts, totals, local),
and are the identity within the bounds; the reports `share_counter` and `share_histogram`
build cover exactly the policy's tasks of the signal and carry the ports' clamped truth
(the counter's total included), on a sample of devices; the local releases' noise
scales are the ones the bulk path uses and their noise has the variance the noise model
says; and the real Prio3 path (shard, both verify_init, the verifier message, both
verify_next, aggregate, unshard) gives exactly the sum of the clamped measurements for
every task, which justifies the bulk path's shortcut (the fleet sum of the clamped
measurements, plus noise).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from analytics._noise import noise_variance
from benchmarks._clamping import cell_counts, clamp_aggregate, clamp_local, clamp_totals, quantize
from benchmarks._fleet import LATENCY, SLOWDOWN, TOKENS, HistogramDay, Layout, draw_day, fleet_of
from benchmarks._releases import local_scales, sum_noise
from benchmarks._types import FloatArray, IntArray
from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import (
    Release,
    TrueCounter,
    TrueHistogram,
    TrueTotal,
    release_counter,
    release_histogram,
)
from client._shares import (
    ReportSharer,
    clamp_histogram,
    counter_measurement,
    histogram_measurements,
    histogram_totals,
    share_counter,
    share_histogram,
    task_vdaf,
)
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

T = TypeVar("T", np.int64, np.float64)

# Devices whose reports are built by the client's share_counter / share_histogram: the
# first ones, and as many of those over the cell caps (sharding all would cost seconds).
_SHARED_SAMPLE = 25
# Few days reach the totals' bounds (none of the 1,000): the day's HEAVY heaviest devices
# are added again with every event HEAVY_FACTOR times (counts and sums), past them.
HEAVY, HEAVY_FACTOR = 50, 3
_BATCH_START = datetime(2026, 1, 5, tzinfo=UTC)


def _prio3_sum(task: AggregationTask, policy_hash: str, vectors: Sequence[list[int]]) -> list[int]:
    """Every vector through the binding (shard, both verify_init, the verifier message,
    both verify_next, aggregate, unshard): what the collector would see without noise."""
    vdaf = task_vdaf(task)
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
    for name, day_raw in raws.items():
        raw = _with_heavy(day_raw, day_raw.sum(axis=1))
        signal, local_signal = layout.counter_signal(name), local.signals[name]
        assert isinstance(local_signal, CounterSignal)
        domain, scale = CellDomain(signal.attributes), check.scales[name]
        tasks = {t.part: t for t in check.signal_tasks(name)}
        for r, row in enumerate(raw.tolist()):
            measured = counter_measurement(signal, row)
            # The vectors as share_counter builds them: the cells, and their sum.
            vectors = {"cells": measured, "total": [sum(measured)]}
            for part, task in tasks.items():
                check.vectors[task.id].append(vectors[part])
            if r < _SHARED_SAMPLE or r >= len(day_raw):
                shared = share_counter(
                    name, signal, domain, row, list(tasks.values()), check.sharer, _BATCH_START
                )
                check.covers(name, shared)
                cells = [t.value for t in shared.truth if isinstance(t, TrueCounter)]
                totals = [t.value for t in shared.truth if isinstance(t, TrueTotal)]
                expected = [float(sum(measured))] if "total" in tasks else []
                if cells != measured or totals != expected:
                    check.problems.append(f"{name}: share_counter's truth differs")
            release = release_counter(name, local_signal, domain, row)
            truth = [t.value for t in release.truth if isinstance(t, TrueCounter)]
            if truth != measured:
                check.problems.append(f"{name}: local clamping differs from the aggregate's")
            if _local_scales_of(release) != {(scale,)}:
                check.problems.append(f"{name}: release scales differ from the bulk path's")
            noisy = [a.value for a in release.aggregates if isinstance(a, CounterAggregate)]
            draws = [x - t for x, t in zip(noisy, truth, strict=True)]
            check.residuals.add("counter cells", draws, Mechanism.DISCRETE_LAPLACE, scale)


def _check_histogram(name: str, local: Policy, h: HistogramDay, check: _Check) -> None:
    signal, local_signal = h.signal, local.signals[name]
    assert isinstance(local_signal, HistogramSignal)
    domain, n_buckets = CellDomain(signal.attributes), len(signal.buckets) + 1
    scales = (check.scales[f"{name}/counts"], check.scales[f"{name}/sums"])
    day_events, day_sums, _ = h.per_cell()
    weight = day_events.sum(axis=1)
    events, sums = _with_heavy(day_events, weight), _with_heavy(day_sums, weight)
    flat = _with_heavy(h.buckets(np.arange(len(day_sums))), weight)
    if not np.array_equal(cell_counts(flat, h.cells), events):
        check.problems.append(f"{name}: the buckets' counts differ from the cells' events")
    agg_port, totals_port = clamp_aggregate(signal, flat, sums), clamp_totals(signal, events, sums)
    local_port = clamp_local(local_signal, flat, sums)
    n, s = flat.sum(axis=1), sums.sum(axis=1)

    def within(max_events: int, sum_cap: float) -> npt.NDArray[np.bool_]:
        # Within both bounds, clamping is the identity (the bulk path's shortcut).
        out: npt.NDArray[np.bool_] = (n <= max_events) & (s <= sum_cap * (1 - 1e-9))
        return out

    cells_within = within(signal.cell_events_cap, signal.cell_sum_cap)
    totals_within = within(signal.max_events_per_window, signal.sum_cap)
    local_within = within(local_signal.max_events_per_window, local_signal.sum_cap)
    tasks = check.signal_tasks(name)
    over = np.flatnonzero(~cells_within)[:_SHARED_SAMPLE].tolist()
    sample = set(range(_SHARED_SAMPLE)) | set(over) | set(range(len(day_sums), len(sums)))
    if not (~totals_within).sum() >= HEAVY:
        check.problems.append(f"{name}: too few device-days past the totals' bounds")
    problems = check.problems
    for r in range(len(sums)):
        snaps = [
            HistogramSnapshot(flat[r, c * n_buckets : (c + 1) * n_buckets].tolist(), sums[r, c])
            for c in range(domain.size)
        ]
        clamped, totals = clamp_histogram(signal, snaps), histogram_totals(signal, snaps)
        counts = [x for cell in clamped.counts for x in cell]
        _compare(problems, f"{name} aggregate", agg_port, r, counts, clamped.sums)
        _compare_totals(problems, f"{name} totals", totals_port, r, totals)
        if cells_within[r]:
            _compare(problems, f"{name} identity", (flat, sums), r, counts, clamped.sums)
        if totals_within[r]:
            _compare_totals(problems, f"{name} totals identity", (n, s), r, totals)
        for task_id, vector in histogram_measurements(tasks, clamped, totals).items():
            check.vectors[task_id].append(vector)
        if r in sample:
            shared = share_histogram(name, signal, domain, snaps, tasks, check.sharer, _BATCH_START)
            check.covers(name, shared)
            cells = [t for t in shared.truth if isinstance(t, TrueHistogram)]
            scalars = {t.measure: t.value for t in shared.truth if isinstance(t, TrueTotal)}
            truth_counts = [x for t in cells for x in t.counts]
            _compare(problems, f"{name} share", agg_port, r, truth_counts, [t.sum for t in cells])
            parts = {t.part for t in tasks}
            expected = {
                **({"count": float(totals[0])} if "total_events" in parts else {}),
                **({"sum": totals[1]} if "total_sum" in parts else {}),
            }
            if scalars != expected:
                problems.append(f"{name}: share_histogram's totals {scalars} vs {expected}")
        release = release_histogram(name, local_signal, domain, snaps)
        truth = [t for t in release.truth if isinstance(t, TrueHistogram)]
        counts = [x for t in truth for x in t.counts]
        _compare(problems, f"{name} local", local_port, r, counts, [t.sum for t in truth])
        if local_within[r]:
            _compare(problems, f"{name} identity", (flat, sums), r, counts, [t.sum for t in truth])
        if _local_scales_of(release) != {scales}:
            problems.append(f"{name}: release scales differ from the bulk path's")
        noisy = [a for a in release.aggregates if isinstance(a, HistogramAggregate)]
        for a, t in zip(noisy, truth, strict=True):
            buckets = [x - y for x, y in zip(a.counts, t.counts, strict=True)]
            check.residuals.add("histogram buckets", buckets, Mechanism.DISCRETE_LAPLACE, scales[0])
            check.residuals.add(
                f"{name} sums", [(a.sum or 0.0) - t.sum], Mechanism.LAPLACE, scales[1]
            )
    # The port of the random rounding: the same fleet sum, up to the rounding's spread.
    by_part: dict[str, AggregationTask] = {t.part: t for t in tasks}
    for part, values in (("sums", agg_port[1]), ("total_sum", totals_port[1][:, None])):
        if (task := by_part.get(part)) is None:
            continue
        units = values / task.resolution
        spread = math.sqrt(2 * float(np.sum((units % 1) * (1 - units % 1))))
        ported = quantize(values, task, np.random.default_rng(0)).sum()
        client = int(np.asarray(check.vectors[task.id]).sum())
        if abs(int(ported) - client) > 6 * spread + 1:
            problems.append(f"{task.id}: quantised sums {ported} (port) vs {client}")


@dataclass
class _Check:
    tasks: dict[str, AggregationTask]
    sharer: ReportSharer
    scales: dict[str, float]
    vectors: dict[str, list[list[int]]]
    residuals: _Residuals
    problems: list[str] = field(default_factory=list)
    shared: int = 0  # devices x signals whose reports the client's share_* built

    def signal_tasks(self, name: str) -> list[AggregationTask]:
        return [t for t in self.tasks.values() if t.signal == name]

    def covers(self, name: str, release: Release) -> None:
        """`release`'s reports are one per task of the signal."""
        self.shared += 1
        if sorted(r.task for r in release.reports) != sorted(t.id for t in self.signal_tasks(name)):
            self.problems.append(f"{name}: the client's reports differ from the policy's tasks")


def check_clients(
    policy: Policy, local: Policy, layout: Layout, devices: int, seed: int
) -> tuple[list[str], list[str]]:
    """(report lines, problems) of running the client's functions and Prio3 on one day
    of every device of a `devices`-device fleet (and its HEAVY heaviest device-days with
    every event HEAVY_FACTOR times), against the bulk path's."""
    fleet = fleet_of(devices, policy.window_seconds)
    day = draw_day(fleet, np.random.default_rng((seed, 0, 0)))
    tasks = aggregation_tasks(policy)
    helper = policy.aggregation.helper
    if helper is None:
        raise AssertionError("the policy names no helper")
    sharer = ReportSharer(policy.content_hash, helper.public_key_bytes)
    check = _Check(tasks, sharer, local_scales(local), {t: [] for t in tasks}, _Residuals())
    _check_counters(local, layout, layout.counter_rows(fleet, day), check)
    _check_histogram(LATENCY, local, layout.latency_day(fleet, day, SLOWDOWN), check)
    _check_histogram(TOKENS, local, layout.tokens_day(fleet, day), check)
    for task_id, task in tasks.items():
        if len(check.vectors[task_id]) != devices + HEAVY:
            check.problems.append(f"{task_id}: {len(check.vectors[task_id])} vectors")
            continue
        expected = np.asarray(check.vectors[task_id]).sum(axis=0).tolist()
        if _prio3_sum(task, policy.content_hash, check.vectors[task_id]) != expected:
            check.problems.append(f"{task_id}: the Prio3 aggregate differs from the clamped sum")
    reports = sum(len(v) for v in check.vectors.values())
    ratios = check.residuals.ratios()
    for kind, (ratio, se) in ratios.items():
        if abs(ratio - 1) > 5 * se:
            check.problems.append(f"local {kind}: noise variance {ratio:.3f} x the analytic")
    lines = [
        f"check, {devices:,} devices x 1 day and its {HEAVY} heaviest again with every event "
        f"x {HEAVY_FACTOR} (past the totals' bounds), "
        f"{'PASS' if not check.problems else 'FAIL'}: "
        f"the Prio3 path ({len(tasks)} tasks, {reports:,} reports: shard, verify_init x2, "
        "message, verify_next x2, aggregate, unshard) gives exactly the sum of the client's "
        "clamped measurements for every task; the numpy ports equal the client's "
        "clamp_histogram (cell caps), histogram_totals (the totals' bounds) and "
        "release_histogram clamping on every device (counts exactly, sums to 1e-12), which "
        "is the identity within the bounds; share_counter and share_histogram build one "
        f"report per task with the ports' truth ({check.shared} device-signals); the "
        "ported rounding gives the client's sums within their spread; the local releases' "
        "scales are the bulk path's",
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


def _with_heavy(rows: npt.NDArray[T], weight: IntArray) -> npt.NDArray[T]:
    """`rows` and, appended, its HEAVY heaviest rows by `weight` times HEAVY_FACTOR."""
    heavy = np.argsort(-weight, kind="stable")[:HEAVY]
    out: npt.NDArray[T] = np.concatenate([rows, rows[heavy] * HEAVY_FACTOR])
    return out


def _compare_totals(
    problems: list[str],
    what: str,
    ported: tuple[IntArray, FloatArray],
    row: int,
    totals: tuple[int, float],
) -> None:
    if int(ported[0][row]) != totals[0]:
        problems.append(f"{what}: device {row}'s total events differ from the client's")
    if not math.isclose(float(ported[1][row]), totals[1], rel_tol=1e-12, abs_tol=1e-9):
        problems.append(f"{what}: device {row}'s total sum differs from the client's")
