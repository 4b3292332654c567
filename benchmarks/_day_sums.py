"""A simulated fleet's day summed per cell, each model's clamping applied per device.

A device whose day is within every bound is released as it is: clamping is an
identity there (counts exactly; a sum up to the one float rounding of the client's
`sum * kept / raw`, or of its `fsum` for a total). Devices over a counter's bound go
through the client's own `counter_measurement` (few: about 4 in 10,000 days exceed 511
requests). Histograms differ: under the aggregate model a fifth of the days exceed the
per-cell parts' caps (`cell_max_events`, `cell_max_sum`: a typical day), too many for the
client's pure-Python functions: they go through `benchmarks._clamping`'s numpy ports of
the client's clamping (`clamp_histogram` for the per-cell parts, `histogram_totals` for
the totals, whose bounds few days reach; the local model's `release_histogram` at the
totals' bounds), checked against the client's functions by `benchmarks._client_check`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchmarks._clamping import (
    cell_counts,
    clamp_aggregate,
    clamp_local,
    clamp_totals,
    quantize,
)
from benchmarks._fleet import SLOWDOWN, Fleet, HistogramDay, Layout, draw_day, fleet_of
from benchmarks._types import FloatArray, IntArray
from client._shares import counter_measurement
from policies import load_policy

__all__ = ["day_sums", "simulate_days"]


@dataclass(frozen=True, slots=True)
class _Clamped:
    """Each model's clamped histogram per device and cell."""

    agg_events: IntArray  # (devices, cells): the per-cell parts, at the cell caps
    agg_sums: FloatArray
    total_events: IntArray  # (devices,): the totals, at their bounds
    total_sums: FloatArray
    local_events: IntArray  # (devices, cells)
    local_sums: FloatArray

    def reuse(self, earlier: _Clamped, rows: npt.NDArray[np.bool_]) -> None:
        """Take `earlier`'s values on `rows` (devices whose data are the same)."""
        for f in self.__slots__:
            getattr(self, f)[rows] = getattr(earlier, f)[rows]


def _histogram_sums(
    layout: Layout,
    h: HistogramDay,
    prefix: str,
    rng: np.random.Generator,
    same: tuple[_Clamped, npt.NDArray[np.bool_]] | None = None,
    totals: bool = True,
) -> tuple[dict[str, FloatArray], _Clamped]:
    """The fleet sums of one histogram's day, per cell and (if `totals`) over all cells.
    `same`: an earlier result on the same day, and which devices it holds the same data
    for (their clamping is not redone)."""
    signal, name = h.signal, h.signal_name
    local = layout.local_histograms[name]
    events, sums, truth = h.per_cell()
    n, s = events.sum(axis=1), sums.sum(axis=1)

    def over(max_events: int, sum_cap: float) -> npt.NDArray[np.bool_]:
        # The devices for which clamping is not the identity (sums: room for rounding).
        out: npt.NDArray[np.bool_] = (n > max_events) | (s > sum_cap * (1 - 1e-9))
        return out

    over_cells = over(signal.cell_events_cap, signal.cell_sum_cap)
    over_totals = over(signal.max_events_per_window, signal.sum_cap)
    over_local = over(local.max_events_per_window, local.sum_cap)
    counts = (int(over_cells.sum()), int(over_totals.sum()), int(over_local.sum()))
    c = _Clamped(events.copy(), sums.copy(), n.copy(), s.copy(), events.copy(), sums.copy())
    if same is not None:
        earlier, unchanged = same
        c.reuse(earlier, unchanged)
        over_cells &= ~unchanged
        over_totals &= ~unchanged
        over_local &= ~unchanged
    rows = np.flatnonzero(over_cells | over_local)
    if rows.size:
        flat = h.buckets(rows)
        at = over_cells[rows]
        if at.any():
            kept, clamped = clamp_aggregate(signal, flat[at], sums[rows[at]])
            c.agg_events[rows[at]], c.agg_sums[rows[at]] = cell_counts(kept, h.cells), clamped
        at = over_local[rows]
        if at.any():
            kept, clamped = clamp_local(local, flat[at], sums[rows[at]])
            c.local_events[rows[at]] = cell_counts(kept, h.cells)
            c.local_sums[rows[at]] = clamped
    rows = np.flatnonzero(over_totals)
    if rows.size:
        c.total_events[rows], c.total_sums[rows] = clamp_totals(signal, events[rows], sums[rows])
    tasks = layout.tasks
    out = {
        f"{prefix}.events": events.sum(axis=0).astype(float),
        f"{prefix}.total": truth.sum(axis=0),
        f"{prefix}.agg_counts": c.agg_events.sum(axis=0).astype(float),
        f"{prefix}.local_counts": c.local_events.sum(axis=0).astype(float),
        f"{prefix}.local_sums": c.local_sums.sum(axis=0),
        # Device-days over the cell caps, over the totals' bounds, over the local bounds.
        f"{prefix}.clamped_devices": np.array(counts, dtype=float),
    }
    if (task := tasks.get(f"{name}/sums")) is not None:
        out[f"{prefix}.agg_units"] = quantize(c.agg_sums, task, rng).sum(axis=0).astype(float)
    if totals:
        out[f"{prefix}.agg_total_events"] = np.array([float(c.total_events.sum())])
        if (task := tasks.get(f"{name}/total_sum")) is not None:
            units = quantize(c.total_sums[:, None], task, rng)
            out[f"{prefix}.agg_total_units"] = np.array([float(units.sum())])
    return out, c


def day_sums(layout: Layout, fleet: Fleet, rng: np.random.Generator) -> dict[str, FloatArray]:
    """One day summed over the fleet, per cell: the unclamped truth and each model's
    clamped input. Keys: `<counter>.truth`, `<counter>.clamped` (both models clamp
    counters alike), and per histogram `events`, `total` (truth), `agg_counts`,
    `agg_units` (the per-cell parts' input, at the cell caps; sums in units of the sums
    task), `agg_total_events`, `agg_total_units` (the total tasks' input, one entry),
    `local_counts`, `local_sums`; `latency_h0.*` is the same day with a canary that is not
    slower (per cell only)."""
    day = draw_day(fleet, rng)
    out: dict[str, FloatArray] = {}
    for name, raw in layout.counter_rows(fleet, day).items():
        signal = layout.counter_signal(name)
        clamped = raw.sum(axis=0).astype(float)
        for r in np.flatnonzero(raw.sum(axis=1) > signal.max_per_window):
            clamped += np.asarray(counter_measurement(signal, raw[r].tolist())) - raw[r]
        out[f"{name}.truth"] = raw.sum(axis=0).astype(float)
        out[f"{name}.clamped"] = clamped
    h1, c1 = _histogram_sums(layout, layout.latency_day(fleet, day, SLOWDOWN), "latency", rng)
    # Without the slowdown only the canary devices' latencies differ.
    h0, _ = _histogram_sums(
        layout,
        layout.latency_day(fleet, day, 1.0),
        "latency_h0",
        rng,
        (c1, ~fleet.canary),
        totals=False,
    )
    tokens, _ = _histogram_sums(layout, layout.tokens_day(fleet, day), "tokens", rng)
    return out | h1 | h0 | tokens


def simulate_days(devices: int, first: int, count: int, seed: int) -> dict[str, FloatArray]:
    """Days `first` to `first + count - 1` of the fleet of `devices`, each key stacked
    (days, cells): a job for a worker process (each day has its own generator, so the
    result does not depend on how days are split between jobs)."""
    policy = load_policy()
    layout, fleet = Layout(policy), fleet_of(devices, policy.window_seconds)
    days = [
        day_sums(layout, fleet, np.random.default_rng((seed, devices, d)))
        for d in range(first, first + count)
    ]
    return {key: np.stack([d[key] for d in days]) for key in days[0]}
