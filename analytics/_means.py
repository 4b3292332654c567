"""Histogram means with honest intervals, and the per-cell summary that shows them.

A mean is a noisy sum over a noisy count: per cell, the buckets added under the local
model, the cell's own count entry under the aggregate model (two draws, not two per
bucket). Its interval is Fieller's construction (see `mean_by_labels`), with the exact
noise laws of secure aggregates where they are involved (`analytics._exact`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from analytics._exact import exact_ratio_interval
from analytics._intervals import check_level, ratio_interval, z_value
from analytics._sources import Planned, Scope, Selection, SumsRequest, label_keys, run_planned
from analytics._totals import (
    WINDOW_KEYS,
    check_labels,
    half_widths,
    noise_terms,
    to_utc,
    with_intervals,
)

__all__ = [
    "cell_summary",
    "cell_summary_of",
    "fleet_mean",
    "mean_by_keys",
    "mean_by_labels",
    "plan_cell_summary",
    "plan_fleet_mean",
    "plan_mean_by_labels",
]

# A histogram's mean per cell: sum / events. Events are the buckets added locally, and
# the cell's own count entry under the aggregate model (two draws, not two per bucket).
_CELL_MEAN = Selection(
    {
        ("local", "bucket"): "count",
        ("local", "sum"): "sum",
        ("aggregate", "count"): "count",
        ("aggregate", "sum"): "sum",
    }
)
# Over all cells: the scalar totals locally; under the aggregate model the totals' tasks
# where the signal has them, else every cell's count and sum.
_FLEET_MEAN = Selection(
    {
        ("local", "total"): "count",
        ("local", "total_sum"): "sum",
        ("aggregate", "total"): "count",
        ("aggregate", "total_sum"): "sum",
        ("aggregate", "count"): "count",
        ("aggregate", "sum"): "sum",
    },
    # The totals' tasks (not scaled down) where the signal has them: every device
    # weighs by its own events, as in the fleet.
    unless={"count": "total", "sum": "total_sum"},
)
_CELL_TOTALS = Selection(
    {
        ("local", "counter"): "total",
        ("aggregate", "counter"): "total",
        ("local", "bucket"): "count",
        ("aggregate", "count"): "count",
    }
)


def _ratio_row(
    s: dict[str, Any], c: dict[str, Any], level: float, bound: tuple[float, float]
) -> tuple[float, float, float, str]:
    """(mean, ci_low, ci_high, method) of sum/count for one cell."""
    num, den = s["estimate"], c["estimate"]
    mean = num / den if den > 0.0 else math.nan
    if s["interval"] == "normal" and c["interval"] == "normal":
        lo, hi = ratio_interval(num, s["variance"], den, c["variance"], z_value(level))
        return mean, lo, hi, "normal"
    if any(t["model"] == "aggregate" for t in [*s["terms"], *c["terms"]]):
        # Fieller's construction with the exact laws of the secure aggregates' noise
        # (and of local draws next to them: `exact_half_width` takes any Laplace term).
        exact = exact_ratio_interval(
            num, noise_terms(s["terms"]), den, noise_terms(c["terms"]), level
        )
        if exact is not None:
            return mean, exact[0], exact[1], "exact"
    # Bonferroni: sum and count each hold at 1 - alpha/2, so both together at
    # >= 1 - alpha, and the ratio lies between the corners of their box.
    s_lo, s_hi = num - bound[0], num + bound[0]
    c_lo, c_hi = den - bound[1], den + bound[1]
    if c_lo <= 0.0:
        return mean, math.nan, math.nan, "bound"
    corners = [s_lo / c_lo, s_lo / c_hi, s_hi / c_lo, s_hi / c_hi]
    return mean, min(corners), max(corners), "bound"


def mean_by_labels(
    conn: duckdb.DuckDBPyConnection,
    signal: str = "gen_ai.client.operation.duration",
    *,
    by: Sequence[str] = ("route", "model"),
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """A histogram's mean (noisy sum / noisy count) per window and label set `by`.

    The count is the buckets added under the local model and the cell's own count
    entry under the aggregate model. std_error is the delta-method one,
    sqrt(V_s/C² + S²·V_c/C⁴). The interval is Fieller's: for normal noise sums (it
    matches the delta method when the count is precise and stays honest when it is
    not), with the exact noise laws when secure aggregates are involved (method
    'exact'), or a conservative box for local cells of few devices (see `_ratio_row`).
    It is null when the count is not clearly above zero at this level. Only releases
    that carry both a count and a sum are used.
    """
    plan = plan_mean_by_labels(
        signal, by=by, per_window=per_window, level=level, since=since, until=until
    )
    return run_planned(conn, [plan])[0]


def plan_mean_by_labels(
    signal: str = "gen_ai.client.operation.duration",
    *,
    by: Sequence[str] = ("route", "model"),
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Planned:
    """`mean_by_labels` as a plan, to be asked with others (`run_planned`)."""
    level = check_level(level)
    labels = check_labels(by)
    keys = [*(WINDOW_KEYS if per_window else []), *label_keys(labels)] or [("r.signal", "signal")]
    return _means_plan(Scope(signal, since, until, _CELL_MEAN), keys, level)


def mean_by_keys(
    conn: duckdb.DuckDBPyConnection,
    signal: str,
    keys: Sequence[tuple[str, str]],
    *,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """`mean_by_labels` grouped by any keys: (SQL over the union row `r`, alias) pairs,
    e.g. a row's region or its window's charge period next to labels (`label_keys`)."""
    level = check_level(level)
    return run_planned(conn, [_means_plan(Scope(signal, since, until, _CELL_MEAN), keys, level)])[0]


_MEAN_SCHEMA: dict[str, Any] = {
    "mean": pl.Float64,
    "std_error": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "interval": pl.String,
    "count_estimate": pl.Float64,
    "sum_estimate": pl.Float64,
    "devices": pl.Int64,
    "privacy_model": pl.String,
    "mechanism": pl.String,
}


def _means_plan(scope: Scope, keys: Sequence[tuple[str, str]], level: float) -> Planned:
    """sum/count per group of `keys`, with the intervals `mean_by_labels` documents.

    `scope.selection` maps each read (model, kind) to the part 'count' or 'sum'.
    """
    keys_all = (*keys, ("{part}", "part"))
    names = [alias for _, alias in keys]
    return Planned(
        SumsRequest(scope, keys_all, paired=True),
        lambda sums: _means_of(sums, names, level),
    )


def _means_of(sums: pl.DataFrame, names: Sequence[str], level: float) -> pl.DataFrame:
    """The means of `sums` (a `component_sums` frame with a `part` key) per `names`."""
    half_level = 1.0 - (1.0 - level) / 2.0
    # Whether a part is near-normal does not depend on the level, so one pass at the
    # Bonferroni level gives both the method and the box half-widths.
    halves_b, methods = half_widths(sums, half_level)
    rows = sums.with_columns(
        interval=pl.Series(methods, dtype=pl.String),
        half_b=pl.Series(halves_b, dtype=pl.Float64),
    ).to_dicts()
    cells: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(row[n] for n in names), {})[row["part"]] = row
    records: list[dict[str, Any]] = []
    for key, parts in cells.items():
        if "sum" not in parts or "count" not in parts:
            continue
        s, c = parts["sum"], parts["count"]
        mean, lo, hi, method = _ratio_row(s, c, level, (s["half_b"], c["half_b"]))
        den = c["estimate"]
        se = (
            math.sqrt(s["variance"] / den**2 + s["estimate"] ** 2 * c["variance"] / den**4)
            if den > 0.0
            else math.nan
        )
        mechanisms = sorted({*s["mechanism"].split("+"), *c["mechanism"].split("+")})
        records.append(
            {
                **dict(zip(names, key, strict=True)),
                "mean": mean,
                "std_error": se,
                "ci_low": None if math.isnan(lo) else lo,
                "ci_high": None if math.isnan(hi) else hi,
                "interval": method,
                "count_estimate": den,
                "sum_estimate": s["estimate"],
                "devices": c["devices"],
                "privacy_model": (
                    s["privacy_model"] if s["privacy_model"] == c["privacy_model"] else "mixed"
                ),
                "mechanism": "+".join(mechanisms),
            }
        )
    schema: dict[str, Any] = {n: sums.schema[n] for n in names}
    schema.update(_MEAN_SCHEMA)
    return to_utc(pl.DataFrame(records, schema=schema))


_SUMMARY_COLS = [
    "signal",
    "attributes",
    "measure",
    "estimate",
    "std_error",
    "ci_low",
    "ci_high",
    "interval",
    "devices",
    "privacy_model",
    "mechanism",
]


def cell_summary(
    conn: duckdb.DuckDBPyConnection,
    *,
    level: float = 0.95,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """One row per signal, cell and measure, over all windows in [since, until].

    measure is 'total' for a counter, 'count' (events: its buckets added, or a secure
    aggregate's count) and 'mean' (sum / count) for a histogram. Columns: signal,
    attributes, measure, estimate, std_error, ci_low, ci_high, interval, devices,
    privacy_model, mechanism. The compact view the terminal shows.
    """
    plans = plan_cell_summary(level=level, signal=signal, since=since, until=until)
    return cell_summary_of(run_planned(conn, plans))


def plan_cell_summary(
    *,
    level: float = 0.95,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Planned]:
    """`cell_summary` as plans (its totals, its means), to be asked with others
    (`run_planned`); `cell_summary_of` makes their answers the summary."""
    level = check_level(level)
    cell = [("r.signal", "signal"), ("r.attributes::VARCHAR", "attributes")]
    totals = Planned(
        SumsRequest(Scope(signal, since, until, _CELL_TOTALS), (*cell, ("{part}", "measure"))),
        lambda sums: with_intervals(sums, level).select(_SUMMARY_COLS),
    )
    return [totals, _means_plan(Scope(signal, since, until, _CELL_MEAN), cell, level)]


def cell_summary_of(answers: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """The summary from the answers to `plan_cell_summary`'s plans."""
    totals, means = answers
    means = (
        means.rename({"mean": "estimate"})
        .with_columns(measure=pl.lit("mean"))
        .select(_SUMMARY_COLS)
    )
    return pl.concat([totals, means]).sort("signal", "attributes", "measure")


def fleet_mean(
    conn: duckdb.DuckDBPyConnection,
    signal: str = "gen_ai.client.operation.duration",
    *,
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """A histogram's fleet-wide mean, total sum / total count.

    Same columns and intervals as `mean_by_labels`, without labels: from the scalar
    totals under the local model (two draws per device), from every cell's count and
    sum under the aggregate model.
    """
    plan = plan_fleet_mean(signal, per_window=per_window, level=level, since=since, until=until)
    return run_planned(conn, [plan])[0]


def plan_fleet_mean(
    signal: str = "gen_ai.client.operation.duration",
    *,
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Planned:
    """`fleet_mean` as a plan, to be asked with others (`run_planned`)."""
    level = check_level(level)
    keys = WINDOW_KEYS if per_window else [("r.signal", "signal")]
    return _means_plan(Scope(signal, since, until, _FLEET_MEAN), keys, level)
