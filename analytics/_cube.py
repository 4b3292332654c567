"""The local model's rows pre-added per cell: one scan of `released_values` per report.

A fleet of devices stores one row per device, cell, bucket and window: ten million rows
for a few thousand devices over a week. Every figure analytics gives is a sum of rows
with the same (signal, kind, cell, bucket, window, region) and noise law, so the rows are
added once into a small table (`local_cube`) and every query of a report reads that
table instead of the raw rows.

Per group the cube keeps the sum of values, the number of rows (`draws`: each row is one
device's draw of its noise, so the group's noise variance is draws x the law's
variance), and whether its rows are *paired*: a histogram's bucket rows whose envelope
also released the cell's sum (a mean needs both from the same devices), a total whose
envelope released the total's sum. Pairing is decided per (signal, window, region,
cell) from an exact count: the bucket-0 rows that have a sum row in their envelope (one
semi-join over two small slices); a cell where all or none are paired gets one flag,
and the rare cell where only some are (a client that released sums for some devices and
not others) is added up row by row with the flag of each row's envelope.

The cube lives as a temporary table of the connection while a `local_cube` block is
open; nested blocks share it, so `build_report` scans the raw rows once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from analytics._noise import noise_fourth_cumulant, noise_variance
from schemas import Mechanism

__all__ = ["Cube", "has_aggregates", "local_cube"]

# Columns of the cube (and of its raw stand-in): see `_sources._UNION`.
_GROUP = (
    "signal, kind, attributes, bucket_index, bucket_upper, window_start, window_end, region, "
    "mechanism, scale, epsilon, rho"
)
_CELL = ("signal", "kind", "attributes", "window_start", "region")
_CELL_SQL = ", ".join(_CELL)


def _on(a: str, b: str) -> str:
    return " AND ".join(f"{a}.{c} = {b}.{c}" for c in _CELL)


# A sum row and its bucket rows come from one histogram aggregate; a total_sum and its
# total are two aggregates of one envelope.
_SAME_RELEASE = (
    "t.envelope_id = h.envelope_id AND t.device_id = h.device_id AND t.signal = h.signal "
    "AND t.attributes = h.attributes AND t.kind = (CASE h.kind WHEN 'bucket' THEN 'sum' "
    "ELSE 'total_sum' END)"
)

# Every row added per group: the one full scan.
_WHOLE = f"""
CREATE TEMP TABLE {{name}} AS
SELECT {_GROUP}, sum(value) AS value, count(*) AS draws
FROM released_values GROUP BY ALL
"""

# Pairing per cell. Buckets: every sum row comes with its own aggregate's bucket 0, so
# sums <= bucket-0 rows, and equal counts mean every release is paired (no join needed).
# Totals: a total_sum is an aggregate of its own, so its pairing is counted exactly (a
# small slice: one row per device, signal and window).
_STATE = f"""
CREATE TEMP TABLE {{name}} AS
WITH hist AS (
    SELECT signal, 'bucket' AS kind, attributes, window_start, region,
           sum(draws) FILTER (WHERE kind = 'bucket' AND bucket_index = 0) AS n,
           coalesce(sum(draws) FILTER (WHERE kind = 'sum'), 0) AS n_paired
    FROM {{whole}} WHERE kind IN ('bucket', 'sum')
    GROUP BY signal, attributes, window_start, region
),
totals AS (
    SELECT h.signal, h.kind, h.attributes, h.window_start, h.region, count(*) AS n,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM released_values t WHERE t.kind = 'total_sum' AND {_SAME_RELEASE}
           )) AS n_paired
    FROM released_values h WHERE h.kind = 'total' GROUP BY ALL
)
SELECT {_CELL_SQL},
       CASE WHEN n_paired = n THEN 'all' WHEN n_paired = 0 THEN 'none' ELSE 'some' END
           AS pairing
FROM (SELECT * FROM hist WHERE n IS NOT NULL UNION ALL SELECT * FROM totals)
"""

_CUBE = f"""
CREATE TEMP TABLE {{name}} AS
SELECT w.*, w.kind IN ('sum', 'total_sum') OR coalesce(s.pairing, 'none') = 'all' AS paired
FROM {{whole}} w LEFT JOIN {{state}} s ON {_on("s", "w")}
WHERE coalesce(s.pairing, '') <> 'some' OR w.kind IN ('sum', 'total_sum')
"""

# Cells where only some releases are paired (rare: a client that released sums for
# some devices and not others): their head-kind rows again, flagged by their envelope.
_MIXED = f"""
INSERT INTO {{name}}
SELECT {_GROUP}, sum(value), count(*), paired FROM (
    SELECT h.*, EXISTS (
        SELECT 1 FROM released_values t WHERE t.kind IN ('sum', 'total_sum') AND {_SAME_RELEASE}
    ) AS paired
    FROM released_values h SEMI JOIN (
        SELECT *, CASE kind WHEN 'bucket' THEN 'bucket' ELSE 'total' END AS head
        FROM {{state}} WHERE pairing = 'some'
    ) s ON s.signal = h.signal AND s.attributes = h.attributes
        AND s.window_start = h.window_start AND s.region = h.region AND s.head = h.kind
) GROUP BY ALL
"""


def _build(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    whole, state = f"{name}_whole", f"{name}_state"
    try:
        conn.execute(_WHOLE.format(name=whole))
        conn.execute(_STATE.format(name=state, whole=whole))
        conn.execute(_CUBE.format(name=name, whole=whole, state=state))
        some = conn.execute(f"SELECT count(*) FROM {state} WHERE pairing = 'some'").fetchall()
        if some[0][0]:
            conn.execute(_MIXED.format(name=name, state=state))
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {whole}")
        conn.execute(f"DROP TABLE IF EXISTS {state}")


@dataclass(frozen=True, slots=True)
class Cube:
    """What one `local_cube` block holds for every query in it."""

    name: str
    """The table of local rows added per group."""
    noise: str
    """A table (mechanism, scale, var, k4): each stored noise law's moments per draw."""
    has_aggregates: bool
    """Whether the warehouse has `fleet_aggregates` (files before it do not)."""
    unknown: frozenset[str]
    """Stored mechanisms this analytics does not know (a query reading one is refused)."""


def has_aggregates(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether the warehouse has the `fleet_aggregates` table (older files do not)."""
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = 'fleet_aggregates'"
    ).fetchall()
    return bool(rows[0][0])


def _noise_table(conn: duckdb.DuckDBPyConnection, cube: str, aggregates: bool) -> frozenset[str]:
    """Create `{cube}_noise`: per stored (mechanism, scale), the law's variance and fourth
    cumulant per draw, computed in Python once so `_noise` stays the one definition of
    every mechanism's law. Returns the mechanisms it does not know."""
    union = f"SELECT DISTINCT mechanism, scale FROM {cube}"
    if aggregates:
        union += " UNION SELECT DISTINCT mechanism, scale FROM fleet_aggregates"
    pairs = conn.execute(union).fetchall()
    mechs: list[str] = []
    scales: list[float] = []
    variances: list[float] = []
    k4s: list[float] = []
    unknown: set[str] = set()
    for mech, scale in pairs:
        try:
            m = Mechanism(mech)
        except ValueError:
            unknown.add(str(mech))
            continue
        mechs.append(m.value)
        scales.append(float(scale))
        variances.append(noise_variance(m, float(scale)))
        k4s.append(noise_fourth_cumulant(m, float(scale)))
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
    view = f"{cube}_moments"
    conn.register(view, table)
    try:
        conn.execute(f"CREATE TEMP TABLE {cube}_noise AS SELECT * FROM {view}")
    finally:
        conn.unregister(view)
    return frozenset(unknown)


_lock = threading.Lock()
_open: dict[int, tuple[Cube, int]] = {}


@contextmanager
def local_cube(conn: duckdb.DuckDBPyConnection) -> Iterator[Cube]:
    """A `Cube`: temporary tables holding `released_values` added per group and every
    stored noise law's moments, built on entry to the outermost block on `conn` and
    dropped when it exits.

    The cube's columns: signal, kind, attributes, bucket_index, bucket_upper,
    window_start, window_end, region, mechanism, scale, epsilon, rho, value (sum),
    draws (rows added), paired. The connection must not be written while a block is
    open (nothing in analytics writes).
    """
    key = id(conn)
    with _lock:
        entry = _open.get(key)
        if entry is not None:
            _open[key] = (entry[0], entry[1] + 1)
    if entry is not None:
        try:
            yield entry[0]
        finally:
            _release(key)
        return
    name = f"_qw_cube_{uuid.uuid4().hex}"
    try:
        _build(conn, name)
        aggregates = has_aggregates(conn)
        unknown = _noise_table(conn, name, aggregates)
    except BaseException:
        _drop(conn, name)
        raise
    cube = Cube(name, f"{name}_noise", aggregates, unknown)
    with _lock:
        _open[key] = (cube, 1)
    try:
        yield cube
    finally:
        if _release(key):
            _drop(conn, name)


def _drop(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {name}")
    conn.execute(f"DROP TABLE IF EXISTS {name}_noise")


def _release(key: int) -> bool:
    """Leave one block; True when it was the outermost (the tables are to be dropped)."""
    with _lock:
        cube, depth = _open[key]
        if depth == 1:
            del _open[key]
            return True
        _open[key] = (cube, depth - 1)
        return False
