"""Fleet totals with honest confidence intervals: DuckDB aggregates, Polars results.

A fleet total is the sum of the devices' released values for one cell. Each released
value is the device's (clamped) truth plus an independent OpenDP noise draw, so the sum
is unbiased for the fleet's clamped truth and its error variance is the sum of the
draws' variances (`analytics._noise`). The estimand is the fleet's own total in that
window, not a super-population quantity: DP noise is the only randomness. Intervals come
from `analytics._intervals` (normal when the noise sum is close to normal, a
distribution-free-style bound otherwise); the `interval` column says which.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from analytics._errors import InvalidQueryError
from analytics._intervals import (
    NoiseTerm,
    bound_half_width,
    check_level,
    normal_is_adequate,
    ratio_interval,
    z_value,
)
from analytics._noise import noise_fourth_cumulant, noise_variance
from schemas import Mechanism

__all__ = [
    "cell_summary",
    "fleet_mean",
    "fleet_totals",
    "grand_totals",
    "mean_by_labels",
    "requests_by_route",
    "signal_totals",
]

_LABEL = re.compile(r"^[a-z][a-z0-9_.]*$")
# Per-cell releases, then the scalar totals over all cells (see `grand_totals`).
_KINDS = ("counter", "bucket", "sum", "total", "total_sum")


@dataclass(frozen=True, slots=True)
class _Scope:
    """Which released values a query reads."""

    signal: str | None
    since: datetime | None
    until: datetime | None
    kinds: tuple[str, ...]

    def where(self) -> tuple[str, list[Any]]:
        clauses = ["r.kind IN (SELECT unnest(?::VARCHAR[]))"]
        params: list[Any] = [list(self.kinds)]
        if self.signal is not None:
            clauses.append("r.signal = ?")
            params.append(self.signal)
        if self.since is not None:
            clauses.append("r.window_start >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("r.window_end <= ?")
            params.append(self.until)
        return " AND ".join(clauses), params


def _check_labels(labels: Sequence[str]) -> list[str]:
    out = list(labels)
    for label in out:
        if not _LABEL.match(label):
            raise InvalidQueryError(f"not an attribute label: {label!r}")
    if len(set(out)) != len(out):
        raise InvalidQueryError("an attribute label is listed twice")
    return out


def _register_noise(conn: duckdb.DuckDBPyConnection, scope: _Scope) -> str:
    """Register a (mechanism, scale) -> (variance, fourth cumulant) table; return its name.

    The moments are computed in Python, once per distinct pair, so `_noise` stays the
    single definition of every mechanism's law.
    """
    where, params = scope.where()
    pairs = conn.execute(
        f"SELECT DISTINCT r.mechanism, r.scale FROM released_values r WHERE {where}", params
    ).fetchall()
    mechs: list[str] = []
    scales: list[float] = []
    variances: list[float] = []
    k4s: list[float] = []
    for mech, scale in pairs:
        try:
            m = Mechanism(mech)
        except ValueError:
            raise InvalidQueryError(f"warehouse holds an unknown mechanism {mech!r}") from None
        mechs.append(m.value)
        scales.append(float(scale))
        variances.append(noise_variance(m, float(scale)))
        k4s.append(noise_fourth_cumulant(m, float(scale)))
    name = f"_qw_noise_{uuid.uuid4().hex}"
    table = pa.table(
        {"mechanism": mechs, "scale": scales, "var": variances, "k4": k4s},
        schema=pa.schema(
            [
                ("mechanism", pa.string()),
                ("scale", pa.float64()),
                ("var", pa.float64()),
                ("k4", pa.float64()),
            ]
        ),
    )
    conn.register(name, table)
    return name


def _component_sums(
    conn: duckdb.DuckDBPyConnection,
    scope: _Scope,
    keys: Sequence[tuple[str, str]],
    *,
    only_cells_with_sum: bool = False,
    sum_kind: str = "sum",
) -> pl.DataFrame:
    """Per group of `keys` ((sql, alias) pairs): estimate, variance, fourth cumulant,
    devices, envelopes, epsilon, rho and the noise terms (mechanism, scale, count)."""
    where, params = scope.where()
    noise = _register_noise(conn, scope)
    key_sql = ", ".join(f"{sql} AS {alias}" for sql, alias in keys)
    aliases = [alias for _, alias in keys]
    key_list = ", ".join(aliases)
    on = " AND ".join(f"a.{k} IS NOT DISTINCT FROM t.{k}" for k in aliases)
    # A histogram's mean needs its count and its sum from the same releases: a device
    # that released counts without a sum would bias count upwards, so drop such cells.
    sum_filter = (
        f"""AND EXISTS (SELECT 1 FROM released_values s WHERE s.kind = '{sum_kind}'
           AND s.envelope_id = r.envelope_id AND s.signal = r.signal
           AND s.attributes::VARCHAR = r.attributes::VARCHAR)"""
        if only_cells_with_sum
        else ""
    )
    sql = f"""
    WITH v AS (
        SELECT {key_sql}, r.value, r.mechanism, r.scale, r.device_id, r.envelope_id,
               r.epsilon, r.rho, n.var, n.k4
        FROM released_values r JOIN {noise} n USING (mechanism, scale)
        WHERE {where} {sum_filter}
    ),
    a AS (
        SELECT {key_list}, sum(value) AS estimate, sum(var) AS variance, sum(k4) AS k4,
               count(DISTINCT device_id) AS devices,
               count(DISTINCT envelope_id) AS envelopes,
               max(epsilon) AS epsilon, max(rho) AS rho
        FROM v GROUP BY {key_list}
    ),
    t AS (
        SELECT {key_list},
               list(struct_pack(mechanism := mechanism, scale := scale, n := n)) AS terms
        FROM (SELECT {key_list}, mechanism, scale, count(*) AS n FROM v
              GROUP BY {key_list}, mechanism, scale)
        GROUP BY {key_list}
    )
    SELECT a.*, t.terms FROM a JOIN t ON {on}
    ORDER BY {", ".join(f"a.{k}" for k in aliases)}
    """
    try:
        rel = conn.sql(sql, params=params)
        if rel is None:  # pragma: no cover - a SELECT always gives a relation
            raise AssertionError("query returned no relation")
        frame: pl.DataFrame = rel.pl()
        return frame
    finally:
        conn.unregister(noise)


def _half_widths(df: pl.DataFrame, level: float) -> tuple[list[float], list[str]]:
    """Interval half-width and method ('normal' | 'bound') of each row of a sums frame."""
    z = z_value(level)
    halves: list[float] = []
    methods: list[str] = []
    for variance, k4, terms in df.select("variance", "k4", "terms").iter_rows():
        if normal_is_adequate(variance, k4):
            halves.append(z * math.sqrt(max(variance, 0.0)))
            methods.append("normal")
        else:
            parsed = [NoiseTerm(Mechanism(t["mechanism"]), t["scale"], t["n"]) for t in terms]
            halves.append(bound_half_width(parsed, variance, level))
            methods.append("bound")
    return halves, methods


def _with_intervals(df: pl.DataFrame, level: float) -> pl.DataFrame:
    halves, methods = _half_widths(df, level)
    return df.with_columns(
        std_error=pl.col("variance").clip(lower_bound=0.0).sqrt(),
        ci_low=pl.col("estimate") - pl.Series(halves, dtype=pl.Float64),
        ci_high=pl.col("estimate") + pl.Series(halves, dtype=pl.Float64),
        interval=pl.Series(methods, dtype=pl.String),
    )


_OUT = ["estimate", "std_error", "ci_low", "ci_high", "interval", "devices", "epsilon", "rho"]
_WINDOW = [("r.window_start", "window_start"), ("r.window_end", "window_end")]


def _utc(df: pl.DataFrame) -> pl.DataFrame:
    cols = [c for c in ("window_start", "window_end") if c in df.columns]
    return df.with_columns(pl.col(c).dt.convert_time_zone("UTC") for c in cols)


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
    bucket_upper), with estimate (sum of the devices' noisy values), std_error (square
    root of the summed noise variances), ci_low/ci_high at `level`, interval ('normal'
    or 'bound', see `analytics._intervals`), devices (distinct devices contributing),
    epsilon/rho (the largest per-release privacy loss among them). `attributes` is the
    cell's canonical JSON label set. `since`/`until` keep windows inside [since, until].
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
    sums = _component_sums(conn, _Scope(signal, since, until, _KINDS), keys)
    out = _with_intervals(sums, level)
    return _utc(out.select(*(alias for _, alias in keys), *_OUT))


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
    'sum' its bounded sum. Cells that differ in labels not in `by` are added together,
    and so are their noise variances. A label a cell lacks groups as ''. With
    `per_window=False` all windows in [since, until] are added too.
    """
    level = check_level(level)
    if kind not in _KINDS:
        raise InvalidQueryError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")
    labels = _check_labels(by)
    keys = [*(_WINDOW if per_window else []), *_label_keys(labels)] or [("r.signal", "signal")]
    sums = _component_sums(conn, _Scope(signal, since, until, (kind,)), keys)
    out = _with_intervals(sums, level)
    return _utc(out.select(*(alias for _, alias in keys), *_OUT))


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


def _ratio_row(
    s: dict[str, Any], c: dict[str, Any], z: float, level: float, bound: tuple[float, float]
) -> tuple[float, float, float, str]:
    """(mean, ci_low, ci_high, method) of sum/count for one cell."""
    num, den = s["estimate"], c["estimate"]
    mean = num / den if den > 0.0 else math.nan
    if s["interval"] == "normal" and c["interval"] == "normal":
        lo, hi = ratio_interval(num, s["variance"], den, c["variance"], z)
        return mean, lo, hi, "normal"
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

    std_error is the delta-method one, sqrt(V_s/C² + S²·V_c/C⁴). The interval is
    Fieller's for a ratio of independent normal errors (it matches the delta method when
    the count is precise and stays honest when it is not); it is null when the count is
    not clearly above zero at this level. Cells whose noise is far from normal use a
    conservative box (see `_ratio_row`). Only releases that carry a sum are used.
    """
    level = check_level(level)
    labels = _check_labels(by)
    keys = [*(_WINDOW if per_window else []), *_label_keys(labels)] or [("r.signal", "signal")]
    return _means(conn, _Scope(signal, since, until, ("bucket", "sum")), keys, level)


def _means(
    conn: duckdb.DuckDBPyConnection,
    scope: _Scope,
    keys: Sequence[tuple[str, str]],
    level: float,
) -> pl.DataFrame:
    """sum/count per group of `keys`, with the intervals `mean_by_labels` documents.

    `scope.kinds` is (count kind, sum kind): ("bucket", "sum") per cell, or ("total",
    "total_sum") for the scalar totals.
    """
    sum_kind = scope.kinds[-1]
    keys_all = [*keys, (f"CASE r.kind WHEN '{sum_kind}' THEN 'sum' ELSE 'count' END", "part")]
    sums = _component_sums(conn, scope, keys_all, only_cells_with_sum=True, sum_kind=sum_kind)
    names = [alias for _, alias in keys]
    z = z_value(level)
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
        mean, lo, hi, method = _ratio_row(s, c, z, level, (s["half_b"], c["half_b"]))
        den = c["estimate"]
        se = (
            math.sqrt(s["variance"] / den**2 + s["estimate"] ** 2 * c["variance"] / den**4)
            if den > 0.0
            else math.nan
        )
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
            }
        )
    schema: dict[str, Any] = {n: sums.schema[n] for n in names}
    schema.update(
        mean=pl.Float64,
        std_error=pl.Float64,
        ci_low=pl.Float64,
        ci_high=pl.Float64,
        interval=pl.String,
        count_estimate=pl.Float64,
        sum_estimate=pl.Float64,
        devices=pl.Int64,
    )
    return _utc(pl.DataFrame(records, schema=schema))


def cell_summary(
    conn: duckdb.DuckDBPyConnection,
    *,
    level: float = 0.95,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """One row per signal, cell and measure, over all windows in [since, until].

    measure is 'total' for a counter, 'count' (events: its buckets added) and 'mean'
    (sum / count) for a histogram. Columns: signal, attributes, measure, estimate,
    std_error, ci_low, ci_high, interval, devices. The compact view the terminal shows.
    """
    level = check_level(level)
    cell = [("r.signal", "signal"), ("r.attributes::VARCHAR", "attributes")]
    part = ("CASE r.kind WHEN 'counter' THEN 'total' ELSE 'count' END", "measure")
    sums = _component_sums(conn, _Scope(signal, since, until, ("counter", "bucket")), [*cell, part])
    totals = _with_intervals(sums, level).select(
        "signal",
        "attributes",
        "measure",
        "estimate",
        "std_error",
        "ci_low",
        "ci_high",
        "interval",
        "devices",
    )
    means = (
        _means(conn, _Scope(signal, since, until, ("bucket", "sum")), cell, level)
        .rename({"mean": "estimate"})
        .with_columns(measure=pl.lit("mean"))
        .select(totals.columns)
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
    """A signal's fleet total over all cells, from its scalar `total` releases.

    Each device releases one noisy total per window (a counter's count, a histogram's
    number of events) at scale bound/epsilon_total: one draw per device instead of one
    per cell, so this is the fleet total to use (far tighter than `signal_totals` summed
    over every label). Devices whose policy releases no total are not counted.
    """
    return signal_totals(
        conn,
        signal,
        by=(),
        kind="total",
        per_window=per_window,
        level=level,
        since=since,
        until=until,
    )


def fleet_mean(
    conn: duckdb.DuckDBPyConnection,
    signal: str = "gen_ai.client.operation.duration",
    *,
    per_window: bool = True,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """A histogram's fleet-wide mean, total_sum / total, from its scalar totals.

    Same columns and intervals as `mean_by_labels`, without labels; two draws per device
    (count and sum) instead of one per bucket and cell.
    """
    level = check_level(level)
    keys = _WINDOW if per_window else [("r.signal", "signal")]
    return _means(conn, _Scope(signal, since, until, ("total", "total_sum")), keys, level)
