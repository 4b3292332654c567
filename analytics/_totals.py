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
from analytics._exact import exact_half_width
from analytics._intervals import (
    NoiseTerm,
    bound_half_width,
    check_level,
    normal_is_adequate,
    z_value,
)
from analytics._sources import (
    Planned,
    Scope,
    Selection,
    SumsRequest,
    label_keys,
    run_planned,
)
from schemas import Mechanism

__all__ = [
    "RESULT_COLUMNS",
    "fleet_totals",
    "grand_totals",
    "histogram_buckets",
    "plan_fleet_totals",
    "plan_grand_totals",
    "plan_histogram_buckets",
    "plan_signal_totals",
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
_AGGREGATE_KINDS = ("counter", "bucket", "count", "sum", "total", "total_sum")
_KINDS = ("counter", "bucket", "count", "sum", "total", "total_sum")
_EVERY_FIGURE = Selection(
    {
        **{("local", k): k for k in _LOCAL_KINDS},
        **{("aggregate", k): k for k in _AGGREGATE_KINDS},
    }
)
# Over all cells: the scalar totals; under the aggregate model a signal's `total` task
# where it has one (two draws), else its cells added (two draws per cell).
_FLEET_TOTAL = Selection(
    {
        ("local", "total"): "total",
        ("aggregate", "total"): "total",
        ("aggregate", "counter"): "total",
        ("aggregate", "count"): "total",
    },
    unless={"counter": "total", "count": "total"},
)


def check_labels(labels: Sequence[str]) -> list[str]:
    out = list(labels)
    for label in out:
        if not _LABEL.match(label):
            raise InvalidQueryError(f"not an attribute label: {label!r}")
        if label in RESULT_COLUMNS:
            raise InvalidQueryError(f"attribute label {label!r} is a result column's name")
    if len(set(out)) != len(out):
        raise InvalidQueryError("an attribute label is listed twice")
    return out


def noise_terms(terms: list[dict[str, Any]]) -> list[NoiseTerm]:
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
    parsed = noise_terms(terms)
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


def half_widths(df: pl.DataFrame, level: float) -> tuple[list[float], list[str]]:
    """Interval half-width and method of each row of a sums frame."""
    halves: list[float] = []
    methods: list[str] = []
    for variance, k4, terms in df.select("variance", "k4", "terms").iter_rows():
        half, method = _interval(variance, k4, terms, level)
        halves.append(half)
        methods.append(method)
    return halves, methods


def with_intervals(df: pl.DataFrame, level: float) -> pl.DataFrame:
    halves, methods = half_widths(df, level)
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
WINDOW_KEYS = [("r.window_start", "window_start"), ("r.window_end", "window_end")]


def to_utc(df: pl.DataFrame) -> pl.DataFrame:
    cols = [c for c in ("window_start", "window_end") if c in df.columns]
    return df.with_columns(pl.col(c).dt.convert_time_zone("UTC") for c in cols)


def _totals_plan(scope: Scope, keys: Sequence[tuple[str, str]], level: float) -> Planned:
    aliases = [alias for _, alias in keys]

    def finish(sums: pl.DataFrame) -> pl.DataFrame:
        return to_utc(with_intervals(sums, level).select(*aliases, *_OUT))

    return Planned(SumsRequest(scope, tuple(keys)), finish)


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
    plan = plan_fleet_totals(level=level, signal=signal, since=since, until=until)
    return run_planned(conn, [plan])[0]


def plan_fleet_totals(
    *,
    level: float = 0.95,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Planned:
    """`fleet_totals` as a plan, to be asked with others (`run_planned`)."""
    level = check_level(level)
    keys = [
        ("r.signal", "signal"),
        ("r.kind", "kind"),
        *WINDOW_KEYS,
        ("r.attributes::VARCHAR", "attributes"),
        ("r.bucket_index", "bucket_index"),
        ("r.bucket_upper", "bucket_upper"),
    ]
    return _totals_plan(Scope(signal, since, until, _EVERY_FIGURE), keys, level)


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
    plan = plan_signal_totals(
        signal, by=by, kind=kind, per_window=per_window, level=level, since=since, until=until
    )
    return run_planned(conn, [plan])[0]


def plan_signal_totals(
    signal: str,
    *,
    by: Sequence[str] = ("route",),
    kind: str = "counter",
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Planned:
    """`signal_totals` as a plan, to be asked with others (`run_planned`)."""
    level = check_level(level)
    if kind not in _KINDS:
        raise InvalidQueryError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    labels = check_labels(by)
    keys = [*(WINDOW_KEYS if per_window else []), *label_keys(labels)] or [("r.signal", "signal")]
    selection = Selection(
        {
            (model, kind): kind
            for model, kinds in (("local", _LOCAL_KINDS), ("aggregate", _AGGREGATE_KINDS))
            if kind in kinds
        }
    )
    return _totals_plan(Scope(signal, since, until, selection), keys, level)


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
    plan = plan_histogram_buckets(
        signal, by=by, per_window=per_window, level=level, since=since, until=until
    )
    return run_planned(conn, [plan])[0]


def plan_histogram_buckets(
    signal: str,
    *,
    by: Sequence[str] = ("route", "model"),
    per_window: bool = False,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Planned:
    """`histogram_buckets` as a plan, to be asked with others (`run_planned`)."""
    level = check_level(level)
    labels = check_labels(by)
    keys = [
        *(WINDOW_KEYS if per_window else []),
        *label_keys(labels),
        ("r.bucket_index", "bucket_index"),
        ("r.bucket_upper", "bucket_upper"),
    ]
    return _totals_plan(Scope(signal, since, until, Selection.same(["bucket"])), keys, level)


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
    aggregate model, its `total` / `total_events` task (two central draws); for a signal
    without one, its cells added: a counter's cells, a histogram's per-cell counts (two
    central draws per cell).
    """
    plan = plan_grand_totals(signal, per_window=per_window, level=level, since=since, until=until)
    return run_planned(conn, [plan])[0]


def plan_grand_totals(
    signal: str,
    *,
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Planned:
    """`grand_totals` as a plan, to be asked with others (`run_planned`)."""
    level = check_level(level)
    keys = WINDOW_KEYS if per_window else [("r.signal", "signal")]
    return _totals_plan(Scope(signal, since, until, _FLEET_TOTAL), keys, level)
