"""What the queries read: every stored figure with its noise, under either privacy model.

Two tables hold released figures (`warehouse`):

- `released_values` (the **local** model): one row per device release; its value is the
  device's clamped truth plus one OpenDP draw of `mechanism` at `scale`.
- `fleet_aggregates` (the **aggregate** model): one row per entry of a Prio3 task's
  vector per batch; its value is the batch's sum, in the signal's unit, plus `draws`
  discrete Laplace draws at `scale` units (one per aggregator) times `resolution`, the
  value of one unit. `reports` devices are in the batch.

`component_sums` reads one union of both, so every query adds figures of either model
alike: a row's noise variance is draws x resolution² x var(mechanism, scale), its fourth
cumulant draws x resolution⁴ x k4, and its noise terms keep (model, mechanism, scale,
resolution, draws) for the interval (`analytics._totals`). A `Selection` says which
(model, kind) rows a query reads and which part of its answer each one is: e.g. a
histogram's event count is its buckets added under the local model, and its own `count`
entry (two draws instead of two per bucket) under the aggregate model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from analytics._cube import Cube, has_aggregates, local_cube
from analytics._errors import InvalidQueryError

__all__ = ["Scope", "Selection", "component_sums", "figure_sources", "has_aggregates"]

_NAME = re.compile(r"^[a-z_]+$")

# Both tables in one shape. The local model's rows come pre-added per group
# (`analytics._cube`): `draws` device releases added into one value, `releases` the
# same count (devices that released the group's cell), `paired` whether they came with
# their cell's sum. `fa` is the aggregates table, or an empty stand-in for a warehouse
# written before it existed.
_UNION = """
u AS (
    SELECT 'local' AS model, NULL::VARCHAR AS batch_id, region,
           NULL::VARCHAR AS policy_hash, window_start, window_end, signal, kind,
           attributes, bucket_index, bucket_upper, value, mechanism, scale,
           draws, 1.0::DOUBLE AS resolution, epsilon, rho, NULL::BIGINT AS reports,
           paired, draws AS releases
    FROM {cube}
    UNION ALL
    SELECT 'aggregate', batch_id, region, policy_hash,
           window_start, window_end, signal, kind, attributes, bucket_index, bucket_upper,
           value, mechanism, scale, draws, resolution, epsilon, NULL::DOUBLE, reports,
           NULL::BOOLEAN, NULL::BIGINT
    FROM fa
)"""
_NO_AGGREGATES = """
fa AS (
    SELECT NULL::VARCHAR AS batch_id, NULL::VARCHAR AS region, NULL::VARCHAR AS policy_hash,
           NULL::TIMESTAMPTZ AS window_start, NULL::TIMESTAMPTZ AS window_end,
           NULL::VARCHAR AS signal, NULL::VARCHAR AS kind, NULL::JSON AS attributes,
           NULL::INTEGER AS bucket_index, NULL::DOUBLE AS bucket_upper,
           NULL::DOUBLE AS value, NULL::VARCHAR AS mechanism, NULL::DOUBLE AS scale,
           NULL::INTEGER AS draws, NULL::DOUBLE AS resolution, NULL::DOUBLE AS epsilon,
           NULL::BIGINT AS reports
    LIMIT 0
)"""
_WITH_AGGREGATES = "fa AS (SELECT * FROM fleet_aggregates)"


def _prelude(cube: Cube) -> str:
    fa = _WITH_AGGREGATES if cube.has_aggregates else _NO_AGGREGATES
    return f"WITH {fa}, {_UNION.format(cube=cube.name)}"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which stored rows a query reads: (model, kind) -> the part of the answer it is."""

    parts: Mapping[tuple[str, str], str]
    unless: Mapping[str, str] = field(default_factory=dict)
    """Aggregate kind -> a preferred aggregate kind: rows of the first are read only for a
    batch (signal, window, region, policy) that has no row of the second, e.g. a fleet
    total from a signal's `total` task where it has one, from its cells added where not."""

    def __post_init__(self) -> None:
        for (model, kind), part in self.parts.items():
            if model not in ("local", "aggregate"):
                raise ValueError(f"unknown privacy model {model!r}")
            if not (_NAME.match(kind) and _NAME.match(part)):
                raise ValueError(f"bad kind or part {kind!r} -> {part!r}")
        for kind, preferred in self.unless.items():
            if not (_NAME.match(kind) and _NAME.match(preferred)):
                raise ValueError(f"bad kind {kind!r} or {preferred!r}")

    @property
    def unless_sql(self) -> str:
        """SQL dropping the aggregate rows that `unless` says a preferred kind replaces."""
        return "".join(
            f""" AND NOT (r.model = 'aggregate' AND r.kind = '{kind}' AND EXISTS (
                SELECT 1 FROM fa t WHERE t.kind = '{preferred}' AND t.signal = r.signal
                AND t.window_start = r.window_start AND t.region = r.region
                AND t.policy_hash = r.policy_hash))"""
            for kind, preferred in sorted(self.unless.items())
        )

    @staticmethod
    def same(kinds: Sequence[str], models: Sequence[str] = ("local", "aggregate")) -> Selection:
        """Each kind is its own part, under every model."""
        return Selection({(m, k): k for m in models for k in kinds})

    @property
    def part_sql(self) -> str:
        """SQL for the part a row `r` of the union is (internal constants only)."""
        whens = " ".join(
            f"WHEN r.model = '{m}' AND r.kind = '{k}' THEN '{p}'"
            for (m, k), p in sorted(self.parts.items())
        )
        return f"(CASE {whens} END)"

    def local_kind_of(self, part: str) -> str | None:
        """The local model's kind that makes `part`, if one does."""
        kinds = [k for (m, k), p in self.parts.items() if m == "local" and p == part]
        return kinds[0] if kinds else None


@dataclass(frozen=True, slots=True)
class Scope:
    """Which released figures a query reads."""

    signal: str | None
    since: datetime | None
    until: datetime | None
    selection: Selection
    windows: tuple[datetime, ...] | None = None
    """Only these windows (by start), if given: what two figures compared must share."""

    def where(self) -> tuple[str, list[Any]]:
        clauses = ["(r.model || ':' || r.kind) IN (SELECT unnest(?::VARCHAR[]))"]
        params: list[Any] = [[f"{m}:{k}" for m, k in self.selection.parts]]
        if self.signal is not None:
            clauses.append("r.signal = ?")
            params.append(self.signal)
        if self.since is not None:
            clauses.append("r.window_start >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("r.window_end <= ?")
            params.append(self.until)
        if self.windows is not None:
            clauses.append("r.window_start IN (SELECT unnest(?::TIMESTAMPTZ[]))")
            params.append(list(self.windows))
        return " AND ".join(clauses) + self.selection.unless_sql, params


def _noise(conn: duckdb.DuckDBPyConnection, scope: Scope, cube: Cube) -> str:
    """The cube's (mechanism, scale) -> (variance, fourth cumulant) table; a query that
    reads a mechanism this analytics does not know is refused."""
    if cube.unknown:
        where, params = scope.where()
        rows = conn.execute(
            f"{_prelude(cube)} SELECT DISTINCT r.mechanism FROM u r WHERE {where}", params
        ).fetchall()
        for (mech,) in rows:
            if mech in cube.unknown:
                raise InvalidQueryError(f"warehouse holds an unknown mechanism {mech!r}")
    return cube.noise


def _pair_filter(selection: Selection) -> str:
    """Keep only cells whose count and sum come from the same releases.

    A mean needs both from one set of devices: a local release with counts but no sum
    would bias the count upwards. Locally that is the same envelope (the cube's `paired`:
    a bucket's envelope released the cell's sum, a total's its total_sum); under the
    aggregate model the same batch key (signal, window, region, policy, cell) must have
    both its `count` and its `sum` entry (or both its `total` and its `total_sum`).
    """
    local_sum = selection.local_kind_of("sum") or "sum"
    if local_sum not in ("sum", "total_sum"):
        raise ValueError(f"a local mean pairs with sum or total_sum, not {local_sum!r}")
    return """AND CASE WHEN r.model = 'local' THEN r.paired
        ELSE EXISTS (
            SELECT 1 FROM fa s
            WHERE s.kind = (CASE r.kind WHEN 'sum' THEN 'count' WHEN 'count' THEN 'sum'
                            WHEN 'total_sum' THEN 'total' ELSE 'total_sum' END)
            AND s.signal = r.signal AND s.window_start = r.window_start
            AND s.region = r.region AND s.policy_hash = r.policy_hash
            AND s.attributes::VARCHAR = r.attributes::VARCHAR) END"""


def component_sums(
    conn: duckdb.DuckDBPyConnection,
    scope: Scope,
    keys: Sequence[tuple[str, str]],
    *,
    paired: bool = False,
) -> pl.DataFrame:
    """Per group of `keys` ((sql over the union row `r`, alias) pairs): estimate,
    variance, k4 (fourth cumulant), devices, epsilon, rho, privacy_model, mechanism and the
    noise terms (model, mechanism, scale, resolution, n draws).

    `devices` is the most devices behind the group in one window: locally the releases of
    its busiest cell (summed over regions; a device releases every cell of a signal
    each window), under the aggregate model the reports of its batches (summed over
    regions); both added when a group has both. Batches do not say which devices they
    hold, so devices that report in several windows cannot be told apart, and the local
    figure is counted the same way. `privacy_model` is local, aggregate or mixed; `mechanism`
    lists the distinct mechanisms, joined by '+'. `epsilon`/`rho` are the largest
    per-release losses. `paired` keeps only cells with both a count and a sum
    (`_pair_filter`). The key `part` is available as `{part}` in key SQL.
    """
    with local_cube(conn) as cube:
        return _component_sums(conn, scope, keys, paired, cube)


def _component_sums(
    conn: duckdb.DuckDBPyConnection,
    scope: Scope,
    keys: Sequence[tuple[str, str]],
    paired: bool,
    cube: Cube,
) -> pl.DataFrame:
    where, params = scope.where()
    noise = _noise(conn, scope, cube)
    part_sql = scope.selection.part_sql
    # Keys get internal names (_k0, _k1, ...) until the last SELECT: an alias may be any
    # attribute label, and a label named like a column of the union (model, value,
    # scale, ...) must not capture it.
    names = [f"_k{i}" for i in range(len(keys))]
    key_sql = ", ".join(
        f"{sql.replace('{part}', part_sql)} AS {name}"
        for (sql, _), name in zip(keys, names, strict=True)
    )
    key_list = ", ".join(names)
    on = " AND ".join(f"a.{k} IS NOT DISTINCT FROM {{t}}.{k}" for k in names)
    renamed = ", ".join(
        f'a.{name} AS "{alias}"' for (_, alias), name in zip(keys, names, strict=True)
    )
    sql = f"""
    {_prelude(cube)},
    v AS (
        SELECT {key_sql}, r.model, r.value, r.mechanism, r.scale, r.draws, r.resolution,
               r.batch_id, r.reports, r.window_start AS w_start, r.releases,
               r.signal AS c_signal, r.kind AS c_kind, r.attributes::VARCHAR AS c_cell,
               r.bucket_index AS c_bucket, r.epsilon, r.rho, n.var, n.k4
        FROM u r JOIN {noise} n USING (mechanism, scale)
        WHERE {where} {_pair_filter(scope.selection) if paired else ""}
    ),
    a AS (
        SELECT {key_list}, sum(value) AS estimate,
               sum(draws * resolution * resolution * var) AS variance,
               sum(draws * resolution ** 4 * k4) AS k4,
               max(epsilon) AS epsilon, max(rho) AS rho,
               CASE WHEN count(DISTINCT model) > 1 THEN 'mixed' ELSE any_value(model) END
                   AS privacy_model,
               string_agg(DISTINCT mechanism, '+' ORDER BY mechanism) AS mechanism
        FROM v GROUP BY {key_list}
    ),
    d AS (
        SELECT {key_list}, max(w_devices) AS local_devices FROM (
            SELECT {key_list}, w_start, max(n) AS w_devices FROM (
                SELECT {key_list}, w_start, c_signal, c_kind, c_cell, c_bucket,
                       sum(releases) AS n
                FROM v WHERE model = 'local'
                GROUP BY {key_list}, w_start, c_signal, c_kind, c_cell, c_bucket)
            GROUP BY {key_list}, w_start)
        GROUP BY {key_list}
    ),
    b AS (
        SELECT {key_list}, max(w_reports) AS batch_devices FROM (
            SELECT {key_list}, w_start, sum(reports)::BIGINT AS w_reports FROM (
                SELECT DISTINCT {key_list}, w_start, batch_id, reports FROM v
                WHERE model = 'aggregate')
            GROUP BY {key_list}, w_start)
        GROUP BY {key_list}
    ),
    t AS (
        SELECT {key_list},
               list(struct_pack(model := model, mechanism := mechanism, scale := scale,
                                resolution := resolution, n := n)) AS terms
        FROM (SELECT {key_list}, model, mechanism, scale, resolution,
                     sum(draws)::BIGINT AS n
              FROM v GROUP BY {key_list}, model, mechanism, scale, resolution)
        GROUP BY {key_list}
    )
    SELECT {renamed}, a.* EXCLUDE ({key_list}),
           (coalesce(d.local_devices, 0) + coalesce(b.batch_devices, 0))::BIGINT AS devices,
           t.terms
    FROM a JOIN t ON {on.format(t="t")} LEFT JOIN b ON {on.format(t="b")}
    LEFT JOIN d ON {on.format(t="d")}
    ORDER BY {", ".join(f"a.{k}" for k in names)}
    """
    rel = conn.sql(sql, params=params)
    if rel is None:  # pragma: no cover - a SELECT always gives a relation
        raise AssertionError("query returned no relation")
    frame: pl.DataFrame = rel.pl()
    return frame


def figure_sources(
    conn: duckdb.DuckDBPyConnection,
    *,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pl.DataFrame:
    """What produced each signal's figures: one row per signal, model and kind.

    Columns: signal, privacy_model, kind, mechanism, draws (per figure: 1 locally, one per
    aggregator), scale_min/scale_max (in the mechanism's units), resolution (value of
    one unit), epsilon (largest per release), windows, releases (device releases, or
    batches), reports_min/reports_max (devices per batch; null locally), devices
    (locally, the most devices that released the signal in one window; null for
    batches, which do not say).
    """
    with local_cube(conn) as cube:
        return _figure_sources(conn, cube, signal, since, until)


def _figure_sources(
    conn: duckdb.DuckDBPyConnection,
    cube: Cube,
    signal: str | None,
    since: datetime | None,
    until: datetime | None,
) -> pl.DataFrame:
    clauses: list[str] = ["TRUE"]
    params: list[Any] = []
    if signal is not None:
        clauses.append("r.signal = ?")
        params.append(signal)
    if since is not None:
        clauses.append("r.window_start >= ?")
        params.append(since)
    if until is not None:
        clauses.append("r.window_end <= ?")
        params.append(until)
    # Per window, a local kind's releases are those of its busiest cell and bucket
    # (every device releases every cell of a signal); a batch is one release.
    sql = f"""
    {_prelude(cube)},
    f AS (SELECT * FROM u r WHERE {" AND ".join(clauses)}),
    w AS (
        SELECT signal, model, kind, window_start, max(n) AS n FROM (
            SELECT signal, model, kind, window_start, attributes::VARCHAR,
                   bucket_index, sum(releases) AS n
            FROM f WHERE model = 'local' GROUP BY ALL)
        GROUP BY ALL
    ),
    lr AS (
        SELECT signal, model, kind, sum(n)::BIGINT AS releases, max(n)::BIGINT AS devices
        FROM w GROUP BY ALL
    ),
    s AS (
    SELECT r.signal, r.model AS privacy_model, r.kind,
           string_agg(DISTINCT r.mechanism, '+' ORDER BY r.mechanism) AS mechanism,
           max(r.draws) FILTER (WHERE r.model = 'aggregate') AS agg_draws,
           min(r.scale) AS scale_min, max(r.scale) AS scale_max,
           max(r.resolution) AS resolution, max(r.epsilon) AS epsilon,
           count(DISTINCT r.window_start) AS windows,
           count(DISTINCT r.batch_id) AS batches,
           min(r.reports) AS reports_min, max(r.reports) AS reports_max
    FROM f r
    GROUP BY r.signal, r.model, r.kind
    )
    SELECT s.signal, s.privacy_model, s.kind, s.mechanism,
           coalesce(s.agg_draws, 1) AS draws, s.scale_min, s.scale_max, s.resolution,
           s.epsilon, s.windows,
           CASE WHEN s.privacy_model = 'local' THEN lr.releases ELSE s.batches END
               AS releases,
           s.reports_min, s.reports_max,
           CASE WHEN s.privacy_model = 'local' THEN lr.devices END AS devices
    FROM s LEFT JOIN lr ON lr.signal = s.signal AND lr.model = s.privacy_model
        AND lr.kind = s.kind
    ORDER BY s.signal, s.privacy_model, s.kind
    """
    rel = conn.sql(sql, params=params)
    if rel is None:  # pragma: no cover - a SELECT always gives a relation
        raise AssertionError("query returned no relation")
    frame: pl.DataFrame = rel.pl()
    return frame
