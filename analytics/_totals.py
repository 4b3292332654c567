"""Fleet totals with honest confidence intervals: DuckDB aggregates, Polars results.

A fleet figure is the sum of released values for one cell: the devices' own noisy
releases under the local model, or the secure aggregates' batch sums (each with two
central noise draws) under the aggregate model (`analytics._sources` reads both as one).
Each is the clamped truth plus independent noise, so the sum is unbiased for the fleet's
clamped truth and its error variance is the sum of the draws' variances
(`analytics._noise`), each scaled by its resolution². The estimand is the fleet's own
total in that window, not a super-population quantity: DP noise is the only randomness.
Intervals come from `analytics._intervals`; the `interval` column says which method:
normal (the noise sum is close to normal), exact (secure aggregates: the noise sum's own
quantile, `analytics._exact`) or bound (a distribution-free guarantee for local cells of
few devices).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from analytics._errors import InvalidQueryError
from analytics._exact import exact_half_width, exact_ratio_interval
from analytics._intervals import (
    NoiseTerm,
    bound_half_width,
    check_level,
    normal_is_adequate,
    ratio_interval,
    z_value,
)
from analytics._sources import Scope, Selection, component_sums
from schemas import Mechanism

__all__ = [
    "cell_summary",
    "fleet_mean",
    "fleet_totals",
    "grand_totals",
    "histogram_buckets",
    "mean_by_labels",
    "requests_by_route",
    "signal_totals",
]

_LABEL = re.compile(r"^[a-z][a-z0-9_.]*$")
# Result columns: a label of the same name would be overwritten in a result row.
RESULT_COLUMNS = frozenset(
    {
        "signal",
        "window_start",
        "window_end",
        "bucket_index",
        "bucket_upper",
        "part",
        "estimate",
        "std_error",
        "ci_low",
        "ci_high",
        "interval",
        "devices",
        "epsilon",
        "rho",
        "privacy_model",
        "mechanism",
        "mean",
        "count_estimate",
        "sum_estimate",
        "variance",
        "k4",
        "terms",
        "half_b",
    }
)
# What each model stores per window: local releases per cell (counter, bucket, sum) and
# scalar totals over all cells (total, total_sum); secure aggregates per cell (counter,
# bucket, and a histogram's count and sum).
_LOCAL_KINDS = ("counter", "bucket", "sum", "total", "total_sum")
_AGGREGATE_KINDS = ("counter", "bucket", "count", "sum")
_KINDS = ("counter", "bucket", "count", "sum", "total", "total_sum")
_EVERY_FIGURE = Selection(
    {
        **{("local", k): k for k in _LOCAL_KINDS},
        **{("aggregate", k): k for k in _AGGREGATE_KINDS},
    }
)
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
# Over all cells: the scalar totals locally; the cells added under the aggregate model,
# which releases no separate total.
_FLEET_TOTAL = Selection(
    {
        ("local", "total"): "total",
        ("aggregate", "counter"): "total",
        ("aggregate", "count"): "total",
    }
)
_FLEET_MEAN = Selection(
    {
        ("local", "total"): "count",
        ("local", "total_sum"): "sum",
        ("aggregate", "count"): "count",
        ("aggregate", "sum"): "sum",
    }
)
_CELL_TOTALS = Selection(
    {
        ("local", "counter"): "total",
        ("aggregate", "counter"): "total",
        ("local", "bucket"): "count",
        ("aggregate", "count"): "count",
    }
)


def _check_labels(labels: Sequence[str]) -> list[str]:
    out = list(labels)
    for label in out:
        if not _LABEL.match(label):
            raise InvalidQueryError(f"not an attribute label: {label!r}")
        if label in RESULT_COLUMNS:
            raise InvalidQueryError(f"attribute label {label!r} is a result column's name")
    if len(set(out)) != len(out):
        raise InvalidQueryError("an attribute label is listed twice")
    return out


def _terms(terms: list[dict[str, Any]]) -> list[NoiseTerm]:
    return [
        NoiseTerm(Mechanism(t["mechanism"]), t["scale"], t["n"], t["resolution"]) for t in terms
    ]


def _interval(
    variance: float, k4: float, terms: list[dict[str, Any]], level: float
) -> tuple[float, str]:
    """(half-width, method) of one cell's noise sum at `level`.

    normal when the sum is close to normal. Otherwise, when every draw is a secure
    aggregate's, exact (its law is known: `analytics._exact`); local cells of few
    devices keep the distribution-free bound. A cell mixing both models takes the
    smaller of the two: each is a guarantee, so the smaller one is too.
    """
    if normal_is_adequate(variance, k4):
        return z_value(level) * math.sqrt(max(variance, 0.0)), "normal"
    parsed = _terms(terms)
    models = {t["model"] for t in terms}
    if models == {"aggregate"}:
        half = exact_half_width(parsed, level)
        if half is not None:
            return half, "exact"
    bound = bound_half_width(parsed, variance, level)
    if "aggregate" in models:
        half = exact_half_width(parsed, level)
        if half is not None and half < bound:
            return half, "exact"
    return bound, "bound"


def _half_widths(df: pl.DataFrame, level: float) -> tuple[list[float], list[str]]:
    """Interval half-width and method of each row of a sums frame."""
    halves: list[float] = []
    methods: list[str] = []
    for variance, k4, terms in df.select("variance", "k4", "terms").iter_rows():
        half, method = _interval(variance, k4, terms, level)
        halves.append(half)
        methods.append(method)
    return halves, methods


def _with_intervals(df: pl.DataFrame, level: float) -> pl.DataFrame:
    halves, methods = _half_widths(df, level)
    return df.with_columns(
        std_error=pl.col("variance").clip(lower_bound=0.0).sqrt(),
        ci_low=pl.col("estimate") - pl.Series(halves, dtype=pl.Float64),
        ci_high=pl.col("estimate") + pl.Series(halves, dtype=pl.Float64),
        interval=pl.Series(methods, dtype=pl.String),
    )


_OUT = [
    "estimate",
    "std_error",
    "ci_low",
    "ci_high",
    "interval",
    "devices",
    "epsilon",
    "rho",
    "privacy_model",
    "mechanism",
]
_WINDOW = [("r.window_start", "window_start"), ("r.window_end", "window_end")]


def _utc(df: pl.DataFrame) -> pl.DataFrame:
    cols = [c for c in ("window_start", "window_end") if c in df.columns]
    return df.with_columns(pl.col(c).dt.convert_time_zone("UTC") for c in cols)


def _totals(
    conn: duckdb.DuckDBPyConnection, scope: Scope, keys: Sequence[tuple[str, str]], level: float
) -> pl.DataFrame:
    sums = component_sums(conn, scope, keys)
    out = _with_intervals(sums, level)
    return _utc(out.select(*(alias for _, alias in keys), *_OUT))


def fleet_totals(
    conn: duckdb.DuckDBPyConnection,
    *,
    level: float = 0.95,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """Every released cell summed over the fleet, one row per window and cell.

    Rows: (signal, kind, window_start, window_end, attributes, bucket_index,
    bucket_upper), with estimate (sum of the noisy values), std_error (square root of
    the summed noise variances), ci_low/ci_high at `level`, interval ('normal', 'exact'
    or 'bound', see `analytics._intervals`), devices (distinct devices contributing, or
    the reports in the window's batches), epsilon/rho (the largest per-release privacy
    loss among them), privacy_model ('local', 'aggregate' or 'mixed') and mechanism.
    `attributes` is the cell's canonical JSON label set. kind is counter, bucket, sum
    (both models), total, total_sum (local scalar totals) or count (a secure aggregate's
    events per histogram cell). `since`/`until` keep windows inside [since, until].
    """
    level = check_level(level)
    keys = [
        ("r.signal", "signal"),
        ("r.kind", "kind"),
        *_WINDOW,
        ("r.attributes::VARCHAR", "attributes"),
        ("r.bucket_index", "bucket_index"),
        ("r.bucket_upper", "bucket_upper"),
    ]
    return _totals(conn, Scope(signal, since, until, _EVERY_FIGURE), keys, level)


def _label_keys(labels: Sequence[str]) -> list[tuple[str, str]]:
    return [(f"coalesce(r.attributes->>'{label}', '')", label) for label in labels]


def signal_totals(
    conn: duckdb.DuckDBPyConnection,
    signal: str,
    *,
    by: Sequence[str] = ("route",),
    kind: str = "counter",
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """One signal's released values of one `kind` summed per window and label set `by`.

    kind 'counter' sums a counter; 'bucket' sums a histogram's buckets (its event count);
    'count' a secure aggregate's per-cell event counts (two draws per cell instead of two
    per bucket); 'sum' its bounded sum. Cells that differ in labels not in `by` are added
    together, and so are their noise variances. A label a cell lacks groups as ''. With
    `per_window=False` all windows in [since, until] are added too.
    """
    level = check_level(level)
    if kind not in _KINDS:
        raise InvalidQueryError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    labels = _check_labels(by)
    keys = [*(_WINDOW if per_window else []), *_label_keys(labels)] or [("r.signal", "signal")]
    selection = Selection(
        {
            (model, kind): kind
            for model, kinds in (("local", _LOCAL_KINDS), ("aggregate", _AGGREGATE_KINDS))
            if kind in kinds
        }
    )
    return _totals(conn, Scope(signal, since, until, selection), keys, level)


def requests_by_route(
    conn: duckdb.DuckDBPyConnection,
    *,
    signal: str = "inference.requests",
    by: Sequence[str] = ("route", "model"),
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """Total inference requests per window, route and model (a counter's totals)."""
    return signal_totals(
        conn,
        signal,
        by=by,
        kind="counter",
        per_window=per_window,
        level=level,
        since=since,
        until=until,
    )


def histogram_buckets(
    conn: duckdb.DuckDBPyConnection,
    signal: str,
    *,
    by: Sequence[str] = ("route", "model"),
    per_window: bool = False,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """A histogram's events per bucket and label set `by` (over the range by default).

    Rows: the labels, bucket_index, bucket_upper (null for the overflow bucket), and the
    columns of `fleet_totals`. Both models release bucket counts per cell.
    """
    level = check_level(level)
    labels = _check_labels(by)
    keys = [
        *(_WINDOW if per_window else []),
        *_label_keys(labels),
        ("r.bucket_index", "bucket_index"),
        ("r.bucket_upper", "bucket_upper"),
    ]
    return _totals(conn, Scope(signal, since, until, Selection.same(["bucket"])), keys, level)


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
        exact = exact_ratio_interval(num, _terms(s["terms"]), den, _terms(c["terms"]), level)
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
    level = check_level(level)
    labels = _check_labels(by)
    keys = [*(_WINDOW if per_window else []), *_label_keys(labels)] or [("r.signal", "signal")]
    return _means(conn, Scope(signal, since, until, _CELL_MEAN), keys, level)


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


def _means(
    conn: duckdb.DuckDBPyConnection,
    scope: Scope,
    keys: Sequence[tuple[str, str]],
    level: float,
) -> pl.DataFrame:
    """sum/count per group of `keys`, with the intervals `mean_by_labels` documents.

    `scope.selection` maps each read (model, kind) to the part 'count' or 'sum'.
    """
    keys_all = [*keys, ("{part}", "part")]
    sums = component_sums(conn, scope, keys_all, paired=True)
    names = [alias for _, alias in keys]
    half_level = 1.0 - (1.0 - level) / 2.0
    # Whether a part is near-normal does not depend on the level, so one pass at the
    # Bonferroni level gives both the method and the box half-widths.
    halves_b, methods = _half_widths(sums, half_level)
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
    return _utc(pl.DataFrame(records, schema=schema))


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
    level = check_level(level)
    cell = [("r.signal", "signal"), ("r.attributes::VARCHAR", "attributes")]
    totals = _with_intervals(
        component_sums(
            conn, Scope(signal, since, until, _CELL_TOTALS), [*cell, ("{part}", "measure")]
        ),
        level,
    ).select(_SUMMARY_COLS)
    means = (
        _means(conn, Scope(signal, since, until, _CELL_MEAN), cell, level)
        .rename({"mean": "estimate"})
        .with_columns(measure=pl.lit("mean"))
        .select(_SUMMARY_COLS)
    )
    return pl.concat([totals, means]).sort("signal", "attributes", "measure")


def grand_totals(
    conn: duckdb.DuckDBPyConnection,
    signal: str,
    *,
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """A signal's fleet total over all cells.

    Under the local model, from its scalar `total` releases: each device releases one
    noisy total per window at scale bound/epsilon_total, one draw per device instead of
    one per cell (devices whose policy releases no total are not counted). Under the
    aggregate model, which releases no separate total, its cells added: a counter's
    cells, a histogram's per-cell counts (two central draws per cell).
    """
    level = check_level(level)
    keys = _WINDOW if per_window else [("r.signal", "signal")]
    return _totals(conn, Scope(signal, since, until, _FLEET_TOTAL), keys, level)


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
    level = check_level(level)
    keys = _WINDOW if per_window else [("r.signal", "signal")]
    return _means(conn, Scope(signal, since, until, _FLEET_MEAN), keys, level)
