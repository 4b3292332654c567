"""The check a configured warehouse path passes before a command opens it.

DuckDB would open a text file or a directory with a bare IO error, an SQLite file
through an extension it downloads, and another application's DuckDB file by filling it
with the warehouse's tables. Each is refused here with one line naming the setting.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from ingest._errors import ConfigurationError
from warehouse import duckdb_file_problem

__all__ = ["check_warehouse_path"]


def check_warehouse_path(path: Path, setting: str, *, must_exist: bool = False) -> None:
    """Raise ConfigurationError unless `path` is a warehouse or, unless `must_exist` (a
    command that only works on what the sink wrote), no file yet or an empty one."""
    problem = duckdb_file_problem(path)
    if problem is not None:
        raise ConfigurationError(f"{setting}: cannot open the warehouse {path}: {problem}")
    if not path.exists() or path.stat().st_size == 0:  # DuckDB makes a database there
        if must_exist:
            raise ConfigurationError(
                f"{setting}: no warehouse at {path} (the sink creates it; this command "
                "works on what the sink wrote: check the path)"
            )
        return
    try:
        conn = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(f"{setting}: cannot open the warehouse {path}: {first}") from exc
    try:
        tables = {row[0] for row in conn.execute("SHOW TABLES").fetchall()}
    finally:
        conn.close()
    if tables and "schema_meta" not in tables:
        raise ConfigurationError(
            f"{setting}: {path} is a DuckDB file but not a Quietwire warehouse (its tables: "
            f"{', '.join(sorted(tables)[:5])}); point it elsewhere"
        )
