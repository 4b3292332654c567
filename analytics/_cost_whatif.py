"""What-if: the cost of a charge period if a share of cloud traffic moved to edge or local.

A moved request costs what the target route's requests of the same model version and
region cost per inference now (edge: its mean latency at the GPU-second price; local:
the declared energy); the rest is unchanged. Per charge period, over every priced cell
(`analytics._cost.price_cells`):

    baseline  = sum over cells of price x N x M
    change    = sum over cloud cells of share x N_cloud x (cpi_target - cpi_cloud)
    projected = baseline + change (each cloud cell's figure taken as one)

Each is a sum of multilinear figures of the period's estimates (requests per cell, mean
tokens per request per cloud region, mean latency per edge cell; tokens per request is
itself a range over three estimates' box at its level, `analytics._cost_tokens`). Their
interval is the sum of each figure's range over the box of its estimates' intervals,
every estimate taken at 1 - alpha/k with k the number of estimates in the period
(`analytics._cost_box`): all hold together at the level, whatever the figures share. A
cell whose mean is not estimable at that level (its count may be zero: e.g. the `other`
model version) is left out of every sum, and a cloud cell whose target cell (same region
and model version) is not estimable stays where it is; both are counted in
`cells_left_out`. Moved requests, the baseline and the projected cost, like their
intervals, are clipped at zero (a cost is never negative, `analytics._cost`); the
change is not: a negative change is a saving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import duckdb
import polars as pl

from analytics._cost import at_least_zero, price_cells, price_per_unit
from analytics._cost_box import Bounded, box_range, sum_ranges, union_level
from analytics._cost_measure import PERIOD_COLUMNS, measured_means, measured_requests
from analytics._cost_tokens import tokens_per_request
from analytics._errors import InvalidQueryError
from analytics._intervals import check_level
from policies import CostPolicy

__all__ = ["WHAT_IF_SCHEMA", "Target", "check_move", "cost_what_if", "project_move"]

Target = Literal["edge", "local"]

WHAT_IF_SCHEMA: dict[str, Any] = {
    "charge_period_start": pl.Datetime("us", "UTC"),
    "charge_period_end": pl.Datetime("us", "UTC"),
    "target": pl.String,
    "share": pl.Float64,
    "moved_requests": pl.Float64,
    "moved_requests_low": pl.Float64,
    "moved_requests_high": pl.Float64,
    "baseline_cost": pl.Float64,
    "baseline_cost_low": pl.Float64,
    "baseline_cost_high": pl.Float64,
    "projected_cost": pl.Float64,
    "projected_cost_low": pl.Float64,
    "projected_cost_high": pl.Float64,
    "change": pl.Float64,
    "change_low": pl.Float64,
    "change_high": pl.Float64,
    "estimates": pl.Int64,
    "cells_left_out": pl.Int64,
    "currency": pl.String,
    "level": pl.Float64,
}


def check_move(share: float, target: str) -> Target:
    """Validate the what-if's parameters; return the target route."""
    if not (isinstance(share, float | int) and 0.0 <= share <= 1.0):
        raise InvalidQueryError(
            f"the share of cloud traffic to move must be in [0, 1], got {share!r}"
        )
    if target not in ("edge", "local"):
        raise InvalidQueryError(f"cloud traffic can move to edge or local, not {target!r}")
    return "edge" if target == "edge" else "local"


@dataclass(frozen=True, slots=True)
class _Cell:
    """One priced cell of a period at the union level: requests, use per request."""

    route: str
    region: str
    model: str
    per_unit: float
    requests: Bounded
    use: Bounded


_Figure = tuple[Callable[..., float], list[Bounded]]


def _cells(cost: CostPolicy, cells: pl.DataFrame) -> list[_Cell]:
    """The priced cells of one period whose use per request is bounded.

    `cells` is a `price_cells` frame computed at the union level, so its requests and
    use-per-request bounds are the ones the box needs.
    """
    out: list[_Cell] = []
    for row in cells.iter_rows(named=True):
        per_unit = price_per_unit(cost, row["route"], row["model"])
        low, high = row["consumed_per_inference_low"], row["consumed_per_inference_high"]
        if per_unit is None or low is None or high is None:
            continue
        use = Bounded(row["consumed_per_inference"], low, high)
        requests = Bounded(row["requests"], row["requests_low"], row["requests_high"])
        out.append(_Cell(row["route"], row["region"], row["model"], per_unit, requests, use))
    return out


@dataclass(slots=True)
class _Figures:
    """One period's figures: each a function and the estimates it takes."""

    baseline: list[_Figure]
    projected: list[_Figure]
    change: list[_Figure]
    moved: list[_Figure]
    left_out: int


def _cost_of(cell: _Cell) -> _Figure:
    return (lambda n, u, p=cell.per_unit: p * n * u, [cell.requests, cell.use])


def _period_figures(cells: list[_Cell], share: float, target: Target) -> _Figures:
    """The figures of one period's what-if; a cloud cell whose target cell (same region
    and model) is not bounded stays where it is and is counted as left out."""
    by_key = {(c.route, c.region, c.model): c for c in cells}
    out = _Figures([], [], [], [], 0)
    for c in cells:
        out.baseline.append(_cost_of(c))
        goal = by_key.get((target, c.region, c.model)) if c.route == "cloud" else None
        if goal is None:
            out.projected.append(_cost_of(c))
            out.left_out += int(c.route == "cloud")
            continue
        pc, pt = c.per_unit, goal.per_unit
        args = [c.requests, c.use, goal.use]
        # Each figure is one function of its estimates, so its range is taken jointly:
        # the projected cell is tighter than its baseline plus its change.
        out.projected.append(
            (lambda n, u, v, pc=pc, pt=pt: n * ((1.0 - share) * pc * u + share * pt * v), args)
        )
        out.change.append((lambda n, u, v, pc=pc, pt=pt: share * n * (pt * v - pc * u), args))
        out.moved.append((lambda n: share * n, [c.requests]))
    return out


_Range = tuple[float | None, float | None, float | None]


def _total(figures: list[_Figure]) -> _Range:
    ranges = [box_range(f, args) for f, args in figures]
    if not ranges:
        return 0.0, 0.0, 0.0
    if any(r is None for r in ranges):
        return None, None, None
    return sum_ranges([r for r in ranges if r is not None])


def project_move(
    cost: CostPolicy, priced: pl.DataFrame, share: float, target: str, level: float, estimates: int
) -> pl.DataFrame:
    """The what-if per charge period from a `price_cells` frame (pure).

    `priced` must hold each estimate's bounds at `union_level(level, estimates)` as its
    per-inference and requests intervals (`cost_what_if` builds it so), `estimates` the
    number of estimates of the largest period.
    """
    goal = check_move(share, target)
    level = check_level(level)
    records: list[dict[str, Any]] = []
    for (start, end), group in priced.group_by(PERIOD_COLUMNS, maintain_order=True):
        cells = _cells(cost, group)
        priced_rows = group.filter(pl.col("priced")).height
        figures = _period_figures(cells, share, goal)
        b, c, m = _total(figures.baseline), _total(figures.change), _total(figures.moved)
        projected = _total(figures.projected)
        currency = group["currency"][0]
        records.append(
            {
                "charge_period_start": start,
                "charge_period_end": end,
                "target": goal,
                "share": float(share),
                "moved_requests": at_least_zero(m[0]),
                "moved_requests_low": at_least_zero(m[1]),
                "moved_requests_high": m[2],
                "baseline_cost": at_least_zero(b[0]),
                "baseline_cost_low": at_least_zero(b[1]),
                "baseline_cost_high": b[2],
                "projected_cost": at_least_zero(projected[0]),
                "projected_cost_low": at_least_zero(projected[1]),
                "projected_cost_high": projected[2],
                "change": c[0],
                "change_low": c[1],
                "change_high": c[2],
                "estimates": estimates,
                "cells_left_out": priced_rows - len(cells) + figures.left_out,
                "currency": currency,
                "level": level,
            }
        )
    return pl.DataFrame(records, schema=WHAT_IF_SCHEMA)


def _estimates_per_period(requests: pl.DataFrame, cost: CostPolicy) -> int:
    """Estimates a period's what-if rests on: requests per priced cell, mean latency per
    edge cell, mean tokens per cloud region (the largest over periods)."""
    priced = requests.filter(
        pl.col("route").is_in(["edge", "local"])
        | ((pl.col("route") == "cloud") & pl.col("model").is_in(list(cost.cloud)))
    )
    counts = priced.group_by(PERIOD_COLUMNS).agg(
        cells=pl.len(),
        edge=(pl.col("route") == "edge").sum(),
        regions=pl.col("region").filter(pl.col("route") == "cloud").n_unique(),
    )
    if counts.is_empty():
        return 1
    return int(counts.select(pl.col("cells") + pl.col("edge") + pl.col("regions")).max().item())


def cost_what_if(
    conn: duckdb.DuckDBPyConnection,
    cost: CostPolicy,
    *,
    share: float,
    target: str,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """Project each charge period's cost if `share` of cloud traffic moved to `target`.

    Columns (`WHAT_IF_SCHEMA`): the period, target, share; moved_requests, baseline_cost,
    projected_cost and change (projected - baseline: negative is a saving), each with
    its interval at `level`; estimates (k, see the module doc), cells_left_out,
    currency, level.
    """
    check_move(share, target)
    level = check_level(level)
    probe = measured_requests(conn, cost, [level], since=since, until=until)
    k = _estimates_per_period(probe, cost)
    at = union_level(level, k)
    # price_cells takes [level, 1 - alpha/2]; here both are the union level, so every
    # bound in the frame is the one the box needs.
    levels = [at, at]
    requests = measured_requests(conn, cost, levels, since=since, until=until)
    labels = [cost.route_label, cost.model_label]
    latency = measured_means(
        conn, cost, cost.latency_signal, labels, levels, since=since, until=until
    )
    tokens = tokens_per_request(conn, cost, [cost.route_label], levels, since=since, until=until)
    priced = price_cells(cost, requests, latency, tokens, at)
    return project_move(cost, priced, share, target, level, k)
