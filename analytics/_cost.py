"""What each route costs: per inference, per 1,000 tokens and in total, with intervals.

The policy's cost model (`policies.CostPolicy`) prices one unit of use per route; the
warehouse says how much use there was (`analytics._cost_measure`): per charge period,
region, route and model version, requests N and the mean of the quantity a request is
billed by, M. Per route:

- cloud: Tokens (FOCUS ConsumedUnit); use per request: mean tokens per request on the
  route for the model version (for every version alike where the token histogram's
  figures carry no model label): the histogram's mean per event times the fleet's token
  events per request (`analytics._cost_tokens`); price: the model's blended price per
  1,000 tokens.
- edge: GPU-Seconds; mean latency (route, model) x GPU-seconds per latency-second;
  per GPU-second.
- local: kWh; Wh per inference / 1000 (declared, exact); per kWh.

cost = price x N x M. Per inference: price x M, whose interval is M's at the level
(Fieller, with the exact noise laws of secure aggregates where they are involved). The
total is a product of two independent estimates: its interval is the range over the box
of N's and M's intervals, each at 1 - alpha/2 (`analytics._cost_box`), clipped at zero
(a cost is never negative). Per 1,000 tokens: cloud's is its blended price (tokens are
what it bills); edge's is 1000 x price x M_latency / M_tokens over the same box; local's
is 1000 x its price per inference / M_tokens.

Every point estimate is clipped at zero too, like the intervals (the total, per
inference, per 1,000 tokens, and the use they price): noise can push the estimate of a
near-empty cell below zero, and the clipped one is never further from the truth, which
is not negative. Where the truth is within noise of zero this biases the estimate
upwards. `cost_std_error` is the delta method's, of the unclipped estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from analytics._cost_box import Bounded, box_range, union_level
from analytics._cost_measure import PERIOD_COLUMNS, measured_means, measured_requests
from analytics._cost_tokens import tokens_per_request
from analytics._intervals import check_level
from policies import CostPolicy

__all__ = [
    "COST_SCHEMA",
    "ROUTES",
    "at_least_zero",
    "cost_breakdown",
    "price_cells",
    "price_per_unit",
]

ROUTES = ("cloud", "edge", "local")
_KEYS = [*PERIOD_COLUMNS, "region", "route", "model"]

COST_SCHEMA: dict[str, Any] = {
    "charge_period_start": pl.Datetime("us", "UTC"),
    "charge_period_end": pl.Datetime("us", "UTC"),
    "region": pl.String,
    "route": pl.String,
    "model": pl.String,
    "priced": pl.Boolean,
    "requests": pl.Float64,
    "requests_low": pl.Float64,
    "requests_high": pl.Float64,
    "consumed_unit": pl.String,
    "consumed_quantity": pl.Float64,
    "consumed_quantity_low": pl.Float64,
    "consumed_quantity_high": pl.Float64,
    "consumed_quantity_std_error": pl.Float64,
    "pricing_unit": pl.String,
    "unit_price": pl.Float64,
    "cost": pl.Float64,
    "cost_std_error": pl.Float64,
    "cost_low": pl.Float64,
    "cost_high": pl.Float64,
    "consumed_per_inference": pl.Float64,
    "consumed_per_inference_low": pl.Float64,
    "consumed_per_inference_high": pl.Float64,
    "cost_per_inference": pl.Float64,
    "cost_per_inference_low": pl.Float64,
    "cost_per_inference_high": pl.Float64,
    "tokens_per_inference": pl.Float64,
    "cost_per_1k_tokens": pl.Float64,
    "cost_per_1k_tokens_low": pl.Float64,
    "cost_per_1k_tokens_high": pl.Float64,
    "interval": pl.String,
    "devices": pl.Int64,
    "privacy_model": pl.String,
    "currency": pl.String,
    "level": pl.Float64,
}


def _mean(row: dict[str, Any], prefix: str, i: int) -> Bounded | None:
    """A mean from the joined row at level index i (None where the row has none)."""
    value = row.get(f"{prefix}mean")
    if value is None or not math.isfinite(value):
        return None
    return Bounded(value, row.get(f"{prefix}low_{i}"), row.get(f"{prefix}high_{i}"))


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def at_least_zero(x: float | None) -> float | None:
    """A use or cost figure clipped at zero: none is negative, though noise can make its
    estimate so (None stays None)."""
    return None if x is None else max(x, 0.0)


@dataclass(frozen=True, slots=True)
class _Meter:
    """How one route's cell is billed: use per request = factor x a mean (`mean_prefix`:
    tokens or latency), or the factor alone (local: exact)."""

    priced: bool
    unit: str
    pricing_unit: str
    unit_price: float
    block: float = 1.0
    factor: float = 1.0
    mean_prefix: str | None = None


def _meter(cost: CostPolicy, route: str, model: str) -> _Meter:
    if route == "cloud" and model in cost.cloud:
        per_1k = cost.cloud[model].per_1k_tokens
        return _Meter(True, "Tokens", "1000 Tokens", per_1k, block=1000.0, mean_prefix="tok_")
    if route == "edge":
        edge = cost.edge
        return _Meter(
            True,
            "GPU-Seconds",
            "GPU-Seconds",
            edge.per_gpu_second,
            factor=edge.gpu_seconds_per_latency_second,
            mean_prefix="lat_",
        )
    if route == "local":
        local = cost.local
        return _Meter(True, "kWh", "kWh", local.price_per_kwh, factor=local.wh_per_inference / 1000)
    return _Meter(False, "", "", math.nan)


def _per_unit(meter: _Meter) -> float:
    """Price of one consumed unit (a token, a GPU-second, a kWh)."""
    return meter.unit_price / meter.block


def _use(meter: _Meter, row: dict[str, Any], i: int) -> Bounded | None:
    """Use per request at level index i; exact for local."""
    if meter.mean_prefix is None:
        return Bounded.exact(meter.factor)
    mean = _mean(row, meter.mean_prefix, i)
    if mean is None:
        return None
    lo, hi, f = mean.low, mean.high, meter.factor
    return Bounded(
        mean.estimate * f, None if lo is None else lo * f, None if hi is None else hi * f
    )


def _use_se(meter: _Meter, row: dict[str, Any]) -> float:
    if meter.mean_prefix is None:
        return 0.0
    se = _finite(row.get(f"{meter.mean_prefix}mean_se"))
    return math.nan if se is None else se * meter.factor


def _per_1k_tokens(meter: _Meter, row: dict[str, Any]) -> tuple[float | None, ...]:
    """(estimate, low, high) of the cost of 1,000 tokens on this cell."""
    if meter.mean_prefix == "tok_":
        return meter.unit_price, meter.unit_price, meter.unit_price
    # Local: an exact cost per inference over mean tokens, one estimate at the level;
    # edge: mean latency over mean tokens, two estimates at 1 - alpha/2 each.
    i = 0 if meter.mean_prefix is None else 1
    tokens = _mean(row, "tok_", i)
    use = _use(meter, row, i)
    if tokens is None or use is None or tokens.estimate <= 0.0:
        return None, None, None
    k = 1000.0 * _per_unit(meter)
    estimate = k * use.estimate / tokens.estimate
    if tokens.low is None or tokens.low <= 0.0:
        return estimate, None, None
    span = box_range(lambda u, t: k * u / t, [use, tokens])
    return (estimate, None, None) if span is None else (estimate, span[1], span[2])


def price_per_unit(cost: CostPolicy, route: str, model: str) -> float | None:
    """The price of one consumed unit (a token, a GPU-second, a kWh) of a route's cell;
    None where the cost model has no price (route `other`, an unpriced cloud model)."""
    meter = _meter(cost, route, model)
    return _per_unit(meter) if meter.priced else None


def _price_row(cost: CostPolicy, row: dict[str, Any], level: float) -> dict[str, Any]:
    meter = _meter(cost, row["route"], row["model"])
    requests = Bounded(row["requests"], row["low_1"], row["high_1"])
    out: dict[str, Any] = {
        **{k: row[k] for k in _KEYS},
        "priced": meter.priced,
        "requests": row["requests"],
        "requests_low": row["low_0"],
        "requests_high": row["high_0"],
        "consumed_unit": meter.unit or None,
        "pricing_unit": meter.pricing_unit or None,
        "unit_price": None if not meter.priced else meter.unit_price,
        "tokens_per_inference": _finite(row.get("tok_mean")),
        "devices": row["devices"],
        "privacy_model": row["privacy_model"],
        "currency": cost.currency,
        "level": level,
    }
    use_level = _use(meter, row, 0)
    use_box = _use(meter, row, 1)
    if not meter.priced or use_level is None or use_box is None:
        return out
    p = _per_unit(meter)
    n = row["requests"]
    quantity = n * use_box.estimate
    out["consumed_quantity"] = max(quantity, 0.0)
    out["cost"] = p * max(quantity, 0.0)
    v_n, se_use = row["requests_var"], _use_se(meter, row)
    q_se = math.sqrt(use_box.estimate**2 * v_n + n * n * se_use**2)
    out["consumed_quantity_std_error"] = q_se
    out["cost_std_error"] = p * q_se
    out["consumed_per_inference"] = max(use_level.estimate, 0.0)
    out["cost_per_inference"] = p * max(use_level.estimate, 0.0)
    if use_level.low is not None and use_level.high is not None and use_level.bounded:
        out["consumed_per_inference_low"] = max(use_level.low, 0.0)
        out["consumed_per_inference_high"] = max(use_level.high, 0.0)
        out["cost_per_inference_low"] = p * max(use_level.low, 0.0)
        out["cost_per_inference_high"] = p * max(use_level.high, 0.0)
    if meter.mean_prefix is None:
        # Exact use per request: the total's only estimate is N, at the level itself.
        n_at_level = Bounded(n, row["low_0"], row["high_0"])
        span = box_range(lambda r, u: r * u, [n_at_level, use_level])
        out["interval"] = row["interval"]
    else:
        span = box_range(lambda r, u: r * u, [requests, use_box])
        out["interval"] = "bonferroni"
    if span is not None:
        out["consumed_quantity_low"] = max(span[1], 0.0)
        out["consumed_quantity_high"] = max(span[2], 0.0)
        out["cost_low"] = p * max(span[1], 0.0)
        out["cost_high"] = p * max(span[2], 0.0)
    per_1k = _per_1k_tokens(meter, row)
    out["cost_per_1k_tokens"], out["cost_per_1k_tokens_low"], out["cost_per_1k_tokens_high"] = (
        at_least_zero(x) for x in per_1k
    )
    return out


def _prefixed(frame: pl.DataFrame, prefix: str, keys: list[str]) -> pl.DataFrame:
    return frame.rename({c: f"{prefix}{c}" for c in frame.columns if c not in keys})


def _tokens_by_model(requests: pl.DataFrame, tokens: pl.DataFrame) -> pl.DataFrame:
    """Token means per period, region, route and model: a version's own where measured,
    else its route's unlabelled one (model '', or a frame without a model column)."""
    route_keys = [*PERIOD_COLUMNS, "region", "route"]
    if "model" in tokens.columns:
        labelled = tokens.filter(pl.col("model") != "")
        unlabelled = tokens.filter(pl.col("model") == "").drop("model")
    else:
        labelled, unlabelled = tokens.clear().with_columns(model=pl.lit("")), tokens
    labelled = labelled.select(*_KEYS, *(c for c in labelled.columns if c not in _KEYS))
    spread = (
        requests.select(_KEYS)
        .unique()
        .join(labelled.select(_KEYS), on=_KEYS, how="anti", nulls_equal=True)
        .join(unlabelled, on=route_keys, how="inner", nulls_equal=True)
        .select(labelled.columns)
    )
    return pl.concat([labelled, spread], how="vertical_relaxed")


def price_cells(
    cost: CostPolicy,
    requests: pl.DataFrame,
    latency: pl.DataFrame,
    tokens: pl.DataFrame,
    level: float,
) -> pl.DataFrame:
    """The cost frame from measured use (pure): one row per period, region, route, model.

    `requests`, `latency` and `tokens` are `analytics._cost_measure` frames with bounds
    at [level, 1 - alpha/2]. `tokens` is per route and model version, or per route only
    (no `model` column); its rows of model '' (figures stored without a model label)
    stand for every version of their route that has no row of its own. Rows of a route
    without a price (`other`) or of a cloud model without one keep their requests with
    `priced` false and null costs.
    """
    level = check_level(level)
    lat = _prefixed(latency, "lat_", _KEYS)
    tok = _prefixed(_tokens_by_model(requests, tokens), "tok_", _KEYS)
    joined = requests.join(lat, on=_KEYS, how="left", nulls_equal=True).join(
        tok, on=_KEYS, how="left", nulls_equal=True
    )
    rows = [_price_row(cost, row, level) for row in joined.iter_rows(named=True)]
    return pl.DataFrame(rows, schema=COST_SCHEMA).sort(_KEYS)


def cost_breakdown(
    conn: duckdb.DuckDBPyConnection,
    cost: CostPolicy,
    *,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """Cost per charge period, region, route and model version, from the warehouse.

    Columns (`COST_SCHEMA`): the period, region, route, model, priced; requests with
    its interval; consumed_unit, consumed_quantity (tokens, GPU-seconds or kWh) with its
    interval; pricing_unit, unit_price; cost with cost_std_error and its interval;
    consumed_per_inference (use per request), cost_per_inference and cost_per_1k_tokens
    with theirs; tokens_per_inference;
    interval (the method of the total's interval: `bonferroni` for a product of two
    estimates, the requests' own method where use per request is exact); devices,
    privacy_model, currency, level. Windows in [since, until] only.
    """
    level = check_level(level)
    levels = [level, union_level(level, 2)]
    requests = measured_requests(conn, cost, levels, since=since, until=until)
    latency = measured_means(
        conn,
        cost,
        cost.latency_signal,
        [cost.route_label, cost.model_label],
        levels,
        since=since,
        until=until,
    )
    tokens = tokens_per_request(
        conn, cost, [cost.route_label, cost.model_label], levels, since=since, until=until
    )
    return price_cells(cost, requests, latency, tokens, level)
