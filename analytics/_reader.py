"""Opening an existing warehouse file (read-only, or for maintenance), with clear errors
instead of DuckDB's."""

from __future__ import annotations

import functools
from pathlib import Path

import duckdb

from analytics._errors import WarehouseError
from warehouse import COLUMNS_SINCE, SCHEMA_VERSION, apply_schema, duckdb_file_problem

__all__ = ["open_warehouse", "require_schema"]

_TABLES = ("schema_meta", "envelopes", "released_values")


def require_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Raise WarehouseError unless `conn` holds the warehouse tables, of a schema version
    this code reads, with every column of that version's tables it has."""
    found = {
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
    }
    missing = [t for t in _TABLES if t not in found]
    if missing:
        raise WarehouseError(
            f"not a Quietwire warehouse (missing table{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)})"
        )
    ((version,),) = conn.execute("SELECT max(version) FROM schema_meta").fetchall()
    if version is None:
        raise WarehouseError("not a Quietwire warehouse (no schema version recorded)")
    if version > SCHEMA_VERSION:
        raise WarehouseError(
            f"written by a newer Quietwire (schema version {version}; this one reads up to "
            f"{SCHEMA_VERSION})"
        )
    # An older layout is read as it is (the sink migrates it when it opens it): every
    # column of today's but those added since.
    added = {
        (table, column)
        for since, tables in COLUMNS_SINCE.items()
        if since > version
        for table, names in tables.items()
        for column in names
    }
    columns = _columns(conn)
    for table, expected in _expected_columns().items():
        wanted = {c for c in expected if (table, c) not in added}
        lacking = sorted(wanted - columns.get(table, set(wanted)))
        if lacking:
            raise WarehouseError(
                f"not a Quietwire warehouse of schema version {version} (table {table} "
                f"lacks {', '.join(lacking)})"
            )


def _columns(conn: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main'"
    ).fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        out.setdefault(table, set()).add(column)
    return out


@functools.cache
def _expected_columns() -> dict[str, frozenset[str]]:
    """Every table's columns at `SCHEMA_VERSION`, as the warehouse creates them."""
    with duckdb.connect(":memory:") as scratch:
        apply_schema(scratch)
        return {t: frozenset(c) for t, c in _columns(scratch).items()}


def open_warehouse(path: Path | str, *, writable: bool = False) -> duckdb.DuckDBPyConnection:
    """Open an existing warehouse file and check its schema; never creates one.

    Read-only by default, so a report never takes the sink's write lock. `writable`
    is for maintenance (retention): DuckDB lets one process write a file, so it fails
    with a `WarehouseError` saying so while a sink or an embedded ingest holds it.
    """
    p = Path(path)
    if not p.exists():
        raise WarehouseError(f"{p}: no such warehouse file")
    # Before DuckDB opens it: DuckDB would read an SQLite file through an extension it
    # downloads (`warehouse.duckdb_file_problem`).
    problem = duckdb_file_problem(p)
    if problem is not None:
        raise WarehouseError(f"{p}: {problem}")
    try:
        conn = duckdb.connect(str(p), read_only=not writable)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if "lock" in first.lower():
            hint = (
                " (another process, e.g. the sink or an embedded ingest, holds the file; "
                "DuckDB allows one writing process: stop it for the run)"
            )
        raise WarehouseError(f"{p}: cannot open as a DuckDB warehouse: {first}{hint}") from exc
    try:
        require_schema(conn)
    except WarehouseError as exc:
        conn.close()
        raise WarehouseError(f"{p}: {exc}") from None
    return conn
