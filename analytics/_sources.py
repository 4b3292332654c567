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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from analytics._cube import Cube, has_aggregates, local_cube
from analytics._errors import InvalidQueryError

__all__ = [
    "Planned",
    "Scope",
    "Selection",
    "SumsRequest",
    "component_sums",
    "component_sums_many",
    "figure_sources",
    "has_aggregates",
    "label_keys",
    "run_planned",
]

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


@dataclass(frozen=True, slots=True)
class SumsRequest:
    """One `component_sums` question: its scope, its keys ((sql over the union row `r`,
    alias) pairs) and whether only paired cells count."""

    scope: Scope
    keys: tuple[tuple[str, str], ...]
    paired: bool = False


@dataclass(frozen=True, slots=True)
class Planned:
    """A question that can be asked together with others (`run_planned`): the sums it
    needs, and how its frame of them becomes the answer."""

    request: SumsRequest
    finish: Callable[[pl.DataFrame], pl.DataFrame]


def run_planned(conn: duckdb.DuckDBPyConnection, plans: Sequence[Planned]) -> list[pl.DataFrame]:
    """Every plan's answer, in order, from one statement (`component_sums_many`)."""
    frames = component_sums_many(conn, [p.request for p in plans])
    return [p.finish(frame) for p, frame in zip(plans, frames, strict=True)]


_VALUE_COLUMNS = (
    "estimate",
    "variance",
    "k4",
    "epsilon",
    "rho",
    "privacy_model",
    "mechanism",
    "devices",
    "terms",
)


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
    return component_sums_many(conn, [SumsRequest(scope, tuple(keys), paired)])[0]


def component_sums_many(
    conn: duckdb.DuckDBPyConnection, requests: Sequence[SumsRequest]
) -> list[pl.DataFrame]:
    """`component_sums` of every request, in one statement: one frame per request, in
    order, each what `component_sums` would give for it alone.

    A statement over the cube costs 10 to 20 ms however few rows it adds (planning, and
    every hash aggregate's set-up: the rows are a few thousand), so a report's questions
    are asked together: each request's rows are tagged with its index, its keys go in
    key columns the requests share by SQL type (`_slots`; a request's rows leave the key
    columns it does not use NULL), and every aggregate groups by the index and all the
    key columns. Each answer is sorted by its own keys, as `component_sums` sorts."""
    if not requests:
        return []
    with local_cube(conn) as cube:
        return _component_sums_many(conn, requests, cube)


# The SQL type of the key expressions the analytics use, so keys of one type share a
# column across the requests of one statement (`_slots`); any other expression gets a
# column of its own.
_KEY_TYPES = {
    "r.window_start": "time",
    "r.window_end": "time",
    "r.signal": "text",
    "r.kind": "text",
    "r.model": "text",
    "r.region": "text",
    "r.policy_hash": "text",
    "r.attributes::VARCHAR": "text",
    "{part}": "text",
    "r.bucket_index": "int",
    "r.bucket_upper": "float",
}
_LABEL_SQL = "coalesce(r.attributes->>'{label}', '')"


def label_keys(labels: Sequence[str]) -> list[tuple[str, str]]:
    """Keys grouping by each of `labels` (checked names: `_totals.check_labels`); a cell
    without the label groups as ''."""
    return [(_LABEL_SQL.format(label=label), label) for label in labels]


def _key_type(sql: str) -> str | None:
    """The type class of a key expression (`_KEY_TYPES`, or a label's text), None if
    unknown."""
    known = _KEY_TYPES.get(sql)
    if known is not None:
        return known
    head, tail = _LABEL_SQL.split("{label}")
    return "text" if sql.startswith(head) and sql.endswith(tail) else None


def _slots(requests: Sequence[SumsRequest]) -> list[list[str]]:
    """Per request, the column each of its keys goes in. A request's rows leave the other
    requests' columns NULL, so columns can be shared: the k-th key of one SQL type of
    every request goes in the same column, and a statement groups by a dozen columns,
    not by every key of every request (each one more to hash for every row)."""
    out: list[list[str]] = []
    for i, request in enumerate(requests):
        used: dict[str, int] = {}
        own: list[str] = []
        for j, (sql, _) in enumerate(request.keys):
            kind = _key_type(sql)
            if kind is None:
                own.append(f"_q{i}k{j}")
                continue
            n = used.get(kind, 0)
            used[kind] = n + 1
            own.append(f"_{kind}{n}")
        out.append(own)
    return out


def _component_sums_many(
    conn: duckdb.DuckDBPyConnection, requests: Sequence[SumsRequest], cube: Cube
) -> list[pl.DataFrame]:
    # Keys get internal names (`_slots`) until the frames are split: an alias may be any
    # attribute label, and a label named like a column of the union (model, value,
    # scale, ...) must not capture it.
    names = _slots(requests)
    every = sorted({name for own in names for name in own})
    branches: list[str] = []
    params: list[Any] = []
    for i, request in enumerate(requests):
        scope = request.scope
        where, where_params = scope.where()
        params += where_params
        noise = _noise(conn, scope, cube)
        part_sql = scope.selection.part_sql
        own = dict(zip(names[i], request.keys, strict=True))
        key_sql = ", ".join(
            f"{own[name][0].replace('{part}', part_sql)} AS {name}"
            if name in own
            else f"NULL AS {name}"
            for name in every
        )
        pairing = _pair_filter(scope.selection) if request.paired else ""
        branches.append(
            f"""SELECT {i} AS _q, {key_sql}, r.model, r.value, r.mechanism, r.scale, r.draws,
               r.resolution, r.batch_id, r.reports, r.window_start AS w_start, r.releases,
               r.signal AS c_signal, r.kind AS c_kind, r.attributes::VARCHAR AS c_cell,
               r.bucket_index AS c_bucket, r.epsilon, r.rho, n.var, n.k4
        FROM u r JOIN {noise} n USING (mechanism, scale)
        WHERE {where} {pairing}"""
        )
    key_list = ", ".join(["_q", *every])
    on = " AND ".join(["a._q = {t}._q", *(f"a.{k} IS NOT DISTINCT FROM {{t}}.{k}" for k in every)])
    union = "\n        UNION ALL\n        ".join(branches)
    sql = f"""
    {_prelude(cube)},
    v AS (
        {union}
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
                                resolution := resolution, n := n)
                    ORDER BY model, mechanism, scale, resolution) AS terms
        FROM (SELECT {key_list}, model, mechanism, scale, resolution,
                     sum(draws)::BIGINT AS n
              FROM v GROUP BY {key_list}, model, mechanism, scale, resolution)
        GROUP BY {key_list}
    )
    SELECT a.*,
           (coalesce(d.local_devices, 0) + coalesce(b.batch_devices, 0))::BIGINT AS devices,
           t.terms
    FROM a JOIN t ON {on.format(t="t")} LEFT JOIN b ON {on.format(t="b")}
    LEFT JOIN d ON {on.format(t="d")}
    """
    rel = conn.sql(sql, params=params)
    if rel is None:  # pragma: no cover - a SELECT always gives a relation
        raise AssertionError("query returned no relation")
    frame: pl.DataFrame = rel.pl()
    out: list[pl.DataFrame] = []
    for i, request in enumerate(requests):
        aliases = [alias for _, alias in request.keys]
        part = frame.filter(pl.col("_q") == i).select(
            *(pl.col(name).alias(alias) for name, alias in zip(names[i], aliases, strict=True)),
            *_VALUE_COLUMNS,
        )
        # In key order, nulls last: DuckDB's ORDER BY over the keys (ascending).
        out.append(part.sort(aliases, nulls_last=True, maintain_order=True))
    return out


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
