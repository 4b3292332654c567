"""Opening a warehouse checks what the readers rely on: its schema version, and the
columns of its tables, so a foreign or future file is one clear error, not a DuckDB
binder traceback in whichever query touches it first."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from analytics import WarehouseError, open_warehouse
from warehouse import SCHEMA_VERSION, connect


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "w.duckdb"
    connect(path).close()
    return path


def _alter(path: Path, *sql: str) -> None:
    with duckdb.connect(str(path)) as conn:
        for statement in sql:
            conn.execute(statement)


def test_a_fresh_warehouse_opens(warehouse: Path) -> None:
    open_warehouse(warehouse).close()


def test_a_file_of_a_newer_schema_is_refused(warehouse: Path) -> None:
    _alter(warehouse, f"UPDATE schema_meta SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(WarehouseError, match="written by a newer Quietwire"):
        open_warehouse(warehouse)


def test_a_table_without_a_column_of_its_version_is_refused(warehouse: Path) -> None:
    _alter(warehouse, "ALTER TABLE released_values RENAME COLUMN window_start TO ws")
    with pytest.raises(WarehouseError, match="released_values lacks window_start"):
        open_warehouse(warehouse)


def test_an_older_file_lacks_only_the_columns_added_since(warehouse: Path) -> None:
    # Version 2 had no device column on erasures: read as it is, not refused.
    _alter(
        warehouse,
        "ALTER TABLE erasures RENAME TO erasures_v3",
        "CREATE TABLE erasures AS SELECT * EXCLUDE (device_id) FROM erasures_v3",
        "DROP TABLE erasures_v3",
        "UPDATE schema_meta SET version = 2",
    )
    open_warehouse(warehouse).close()
    _alter(warehouse, "ALTER TABLE envelopes RENAME COLUMN device_id TO d")
    with pytest.raises(WarehouseError, match="envelopes lacks device_id"):
        open_warehouse(warehouse)


def test_a_file_without_a_schema_version_is_refused(warehouse: Path) -> None:
    _alter(warehouse, "DELETE FROM schema_meta")
    with pytest.raises(WarehouseError, match="no schema version"):
        open_warehouse(warehouse)
