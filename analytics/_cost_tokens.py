"""Mean tokens per request: the token histogram's mean per event times events per request.

An app may record a request's tokens as one event (`Telemetry.histogram`, as the fleet
simulator does) or as one event per token type, input and output (the OpenTelemetry
GenAI conventions, which the default policy's `otel` mapping follows: it ignores
`gen_ai.token.type`). The histogram's sum over its count is then tokens per *event*,
half the tokens per request under the conventions. So, per charge period and region:

    tokens per request (route, model) = mean per event (route, model) x E / Q

with E the fleet's token events and Q its requests over all cells: each from its signal's
scalar total task where the batch has one (clamped only at the totals' bounds, above a
heavy day), else its cells added (a secure aggregate's per-cell counts, a local
release's buckets; a local counter's cells). Not from the cells' ratio per route: under
the aggregate model a heavy day's per-cell parts are scaled down as a whole, which keeps
each cell's mean but not its count. The assumption: events per request is the same on
every route and model version (it is a property of the app's instrumentation).

The three estimates are independent; the interval at a level is the range of M x E / Q
over the box of their intervals at 1 - alpha/3 each (`analytics._cost_box`), null where
the mean's interval is or the requests' lower bound is not positive. The standard error
is the delta method's. The frame has `measured_means`'s columns, so the cost model reads
it in place of the histogram's means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from analytics._cost_box import Bounded, box_range, union_level
from analytics._cost_measure import PERIOD_COLUMNS, measured_means, period_keys
from analytics._sources import Scope, Selection, component_sums
from analytics._totals import half_widths
from policies import CostPolicy

__all__ = ["events_per_request", "tokens_per_request"]

_ESTIMATES = 3  # the mean per event, the token events, the requests
_PERIOD = [*PERIOD_COLUMNS, "region"]
# Over all cells, as `analytics.grand_totals` reads a fleet total; locally from the
# cells (bucket counts, counter cells): a local total is released next to them.
_EVENTS = Selection(
    {
        ("aggregate", "total"): "events",
        ("aggregate", "count"): "events",
        ("local", "bucket"): "events",
    },
    unless={"count": "total"},
)
_REQUESTS = Selection(
    {
        ("aggregate", "total"): "requests",
        ("aggregate", "counter"): "requests",
        ("local", "counter"): "requests",
    },
    unless={"counter": "total"},
)


def _bounded(frame: pl.DataFrame, name: str, levels: Sequence[float]) -> pl.DataFrame:
    columns: list[pl.Series] = [
        frame["estimate"].alias(name),
        frame["variance"].alias(f"{name}_var"),
    ]
    for i, level in enumerate(levels):
        half = pl.Series(half_widths(frame, level)[0], dtype=pl.Float64)
        columns += [
            (frame["estimate"] - half).alias(f"{name}_low_{i}"),
            (frame["estimate"] + half).alias(f"{name}_high_{i}"),
        ]
    return frame.select(*_PERIOD, *columns)


def events_per_request(
    conn: duckdb.DuckDBPyConnection,
    cost: CostPolicy,
    levels: Sequence[float],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """Token events E and requests Q over all cells, per charge period and region.

    Columns: the period's start and end (UTC), region, events and requests with their
    noise variances (`events_var`, `requests_var`) and `events_low_<i>` / `_high_<i>`,
    `requests_low_<i>` / `_high_<i>` at `levels[i]`.
    """
    keys = period_keys(cost.charge_period)
    events = component_sums(conn, Scope(cost.tokens_signal, since, until, _EVENTS), keys)
    requests = component_sums(conn, Scope(cost.requests_signal, since, until, _REQUESTS), keys)
    out = _bounded(events, "events", levels).join(
        _bounded(requests, "requests", levels), on=_PERIOD, how="inner", nulls_equal=True
    )
    return out.with_columns(pl.col(c).dt.replace_time_zone("UTC") for c in PERIOD_COLUMNS)


def _per_request(row: dict[str, Any], n_levels: int) -> dict[str, Any]:
    m, e, q = row["mean"], row["events"], row["requests"]
    out: dict[str, Any] = {"interval": "bonferroni"}
    if m is None or not (q > 0.0 and math.isfinite(m)):
        return {**out, "mean": math.nan, "mean_se": math.nan}
    out["mean"] = m * e / q
    se_m = row["mean_se"] if row["mean_se"] is not None else math.nan
    out["mean_se"] = math.sqrt(
        (e / q * se_m) ** 2
        + (m / q) ** 2 * max(row["events_var"], 0.0)
        + (m * e / q**2) ** 2 * max(row["requests_var"], 0.0)
    )
    for i in range(n_levels):
        requests = Bounded(q, row[f"requests_low_{i}"], row[f"requests_high_{i}"])
        span = None
        if requests.low is not None and requests.low > 0.0:
            span = box_range(
                lambda mean, events, reqs: mean * events / reqs,
                [
                    Bounded(m, row[f"low_{i}"], row[f"high_{i}"]),
                    Bounded(e, row[f"events_low_{i}"], row[f"events_high_{i}"]),
                    requests,
                ],
            )
        out[f"low_{i}"], out[f"high_{i}"] = (None, None) if span is None else span[1:]
    return out


def tokens_per_request(
    conn: duckdb.DuckDBPyConnection,
    cost: CostPolicy,
    labels: Sequence[str],
    levels: Sequence[float],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """Mean tokens per request per charge period, region and `labels` (see the module).

    Columns as `analytics._cost_measure.measured_means`: the period, region, the labels
    (route and model renamed), mean, mean_se, interval (`bonferroni`) and low_<i> /
    high_<i> at `levels[i]` (null where not estimable).
    """
    inner = [union_level(level, _ESTIMATES) for level in levels]
    per_event = measured_means(
        conn, cost, cost.tokens_signal, labels, inner, since=since, until=until
    )
    ratio = events_per_request(conn, cost, inner, since=since, until=until)
    joined = per_event.join(ratio, on=_PERIOD, how="inner", nulls_equal=True)
    bounds = [f"{side}_{i}" for i in range(len(levels)) for side in ("low", "high")]
    group = [c for c in per_event.columns if c not in {"mean", "mean_se", "interval", *bounds}]
    rows = [
        {**{k: row[k] for k in group}, **_per_request(row, len(levels))}
        for row in joined.iter_rows(named=True)
    ]
    schema: dict[str, pl.DataType] = {
        **{k: per_event.schema[k] for k in group},
        "mean": pl.Float64(),
        "mean_se": pl.Float64(),
        "interval": pl.String(),
        **{b: pl.Float64() for b in bounds},
    }
    return pl.DataFrame(rows, schema=schema)
