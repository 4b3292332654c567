"""What the cost model multiplies prices by: the fleet's measured use, per charge period.

Three estimates per charge period and region, each with its DP noise (`analytics._totals`
and `analytics._means`, which read both privacy models alike):

- requests per route and model version (the requests counter's cells added);
- mean latency per request, per route and model version (the latency histogram's sum
  over its count): an edge request's GPU time;
- mean tokens per token event, per route and model version (the token histogram's sum
  over its count; figures stored without a model label group as model '', and the cost
  model applies them to every version on their route), which `analytics._cost_tokens`
  turns into tokens per request (an app may record one event per token type).

Use is requests x mean, not the histograms' sums: under the aggregate model a heavy
day's per-cell parts are scaled down as a whole (`cell_max_events`), which keeps each
cell's mean but not its sum.

Intervals are wanted at several levels (a figure made of k estimates takes each at
1 - alpha/k, `analytics._cost_box`), so each frame carries `low_<i>` / `high_<i>` per
requested level, in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import polars as pl

from analytics._errors import InvalidQueryError
from analytics._means import mean_by_keys
from analytics._sources import Scope, Selection, component_sums, label_keys
from analytics._totals import half_widths
from policies import ChargePeriod, CostPolicy

__all__ = ["PERIOD_COLUMNS", "measured_means", "measured_requests", "period_keys"]

PERIOD_COLUMNS = ("charge_period_start", "charge_period_end")
_STEP = {"day": "1 day", "week": "7 days", "month": "1 month"}
_REQUESTS = Selection.same(["counter"])


def period_keys(period: ChargePeriod) -> list[tuple[str, str]]:
    """Keys grouping a row by the UTC charge period its window starts in, and region."""
    if period not in _STEP:
        raise InvalidQueryError(f"charge period must be day, week or month, got {period!r}")
    start = f"date_trunc('{period}', timezone('UTC', r.window_start))"
    return [
        (start, PERIOD_COLUMNS[0]),
        (f"{start} + INTERVAL '{_STEP[period]}'", PERIOD_COLUMNS[1]),
        ("r.region", "region"),
    ]


def _utc(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col(c).dt.replace_time_zone("UTC") for c in PERIOD_COLUMNS)


def measured_requests(
    conn: duckdb.DuckDBPyConnection,
    cost: CostPolicy,
    levels: Sequence[float],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """Requests per charge period, region, route and model version.

    Columns: the period's start and end (UTC), region, route, model, requests (the
    estimate), requests_var (its noise variance), interval (the method at the first
    level), devices, privacy_model, and low_<i>/high_<i> at `levels[i]`.
    """
    keys = [
        *period_keys(cost.charge_period),
        *label_keys([cost.route_label, cost.model_label]),
    ]
    sums = component_sums(conn, Scope(cost.requests_signal, since, until, _REQUESTS), keys)
    sums = sums.rename({cost.route_label: "route", cost.model_label: "model"})
    bounds: list[pl.Series] = []
    method: list[str] = []
    for i, level in enumerate(levels):
        halves, methods = half_widths(sums, level)
        half = pl.Series(halves, dtype=pl.Float64)
        bounds += [
            (sums["estimate"] - half).alias(f"low_{i}"),
            (sums["estimate"] + half).alias(f"high_{i}"),
        ]
        method = method or methods
    out = sums.select(
        *PERIOD_COLUMNS,
        "region",
        "route",
        "model",
        pl.col("estimate").alias("requests"),
        pl.col("variance").alias("requests_var"),
        "devices",
        "privacy_model",
    ).with_columns(*bounds, interval=pl.Series(method, dtype=pl.String))
    return _utc(out)


def measured_means(
    conn: duckdb.DuckDBPyConnection,
    cost: CostPolicy,
    signal: str,
    labels: Sequence[str],
    levels: Sequence[float],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """A histogram's mean per request, per charge period, region and `labels`.

    Columns: the period's start and end, region, the labels (route and model renamed
    from the policy's label names), mean, mean_se (delta method), interval (the method
    at the first level) and low_<i>/high_<i> at `levels[i]` (null where the count is not
    clearly above zero at that level).
    """
    keys = [*period_keys(cost.charge_period), *label_keys(labels)]
    names = {cost.route_label: "route", cost.model_label: "model"}
    out: pl.DataFrame | None = None
    # Each distinct level once: the exact ratio intervals are the slow part.
    frames = {
        level: mean_by_keys(conn, signal, keys, level=level, since=since, until=until)
        for level in dict.fromkeys(levels)
    }
    for i, level in enumerate(levels):
        frame = frames[level]
        frame = frame.rename({k: v for k, v in names.items() if k in frame.columns})
        group = [*PERIOD_COLUMNS, "region", *(names.get(label, label) for label in labels)]
        bounds = frame.select(
            *group, pl.col("ci_low").alias(f"low_{i}"), pl.col("ci_high").alias(f"high_{i}")
        )
        if out is None:
            out = frame.select(
                *group,
                "mean",
                pl.col("std_error").alias("mean_se"),
                "interval",
            ).join(bounds, on=group, how="left", nulls_equal=True)
        else:
            out = out.join(bounds, on=group, how="left", nulls_equal=True)
    if out is None:
        raise InvalidQueryError("at least one confidence level is needed")
    return _utc(out)
