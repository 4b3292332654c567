"""Opening an existing warehouse file (read-only, or for maintenance), with clear errors
instead of DuckDB's."""

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


def open_warehouse(path: Path | str, *, writable: bool = False) -> duckdb.DuckDBPyConnection:
    """Open an existing warehouse file and check its schema; never creates one.

    Read-only by default, so a report never takes the sink's write lock. `writable`
    is for maintenance (retention): DuckDB lets one process write a file, so it fails
    with a `WarehouseError` saying so while a sink or an embedded ingest holds it.
    """
    p = Path(path)
    if not p.exists():
        raise WarehouseError(f"{p}: no such warehouse file")
    if not p.is_file():
        raise WarehouseError(f"{p}: not a file")
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
