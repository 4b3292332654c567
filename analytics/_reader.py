"""Opening a warehouse file for reading, with clear errors instead of DuckDB's."""

from __future__ import annotations

from pathlib import Path

import duckdb

from analytics._errors import WarehouseError

__all__ = ["open_warehouse", "require_schema"]

_TABLES = ("schema_meta", "envelopes", "released_values")


def require_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Raise WarehouseError unless `conn` holds the warehouse tables."""
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


def open_warehouse(path: Path | str) -> duckdb.DuckDBPyConnection:
    """Open an existing warehouse file read-only and check its schema.

    Read-only so a report never creates a file or takes the sink's write lock.
    """
    p = Path(path)
    if not p.exists():
        raise WarehouseError(f"{p}: no such warehouse file")
    if not p.is_file():
        raise WarehouseError(f"{p}: not a file")
    try:
        conn = duckdb.connect(str(p), read_only=True)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WarehouseError(f"{p}: cannot open as a DuckDB warehouse: {first}") from exc
    try:
        require_schema(conn)
    except WarehouseError as exc:
        conn.close()
        raise WarehouseError(f"{p}: {exc}") from None
    return conn
