"""Deleted means gone: after deletions, the warehouse is rewritten into a fresh file.

DuckDB's DELETE only marks rows deleted. A CHECKPOINT rewrites the affected row groups
and frees their old blocks, but a freed block keeps its bytes until DuckDB happens to
reuse it, and VACUUM reclaims nothing (duckdb.org, "Reclaiming Space"); measured here,
every value a consent revocation deleted was still in the closed file as raw bytes.
The WAL holds inserted rows verbatim until a checkpoint folds it into the file. So the
one way to make deleted values physically absent is DuckDB's documented compaction:
copy the database into a fresh file (`COPY FROM DATABASE`) and replace the old one.

`compact(conn, path)` does that, in this order, so that a crash at any point leaves a
complete warehouse (the old file, or the new one) and never loses rows or the Kafka
offsets stored with them:

1. CHECKPOINT: the WAL is folded into the file (and emptied).
2. Copy every table into `<file>.compacting`, then check each table's row count and
   content checksum (sum of row hashes) against the original; any difference aborts.
3. In the copy, mark every pending erasure erased (`erasures.erased_at`).
4. Detach the copy (checkpointed, no WAL left), close the original, take an exclusive
   lock on it (no other process can open it in between), fsync the copy, rename it
   over the original (atomic), fsync the directory.

The caller must hold the file's only connection in this process (DuckDB shares one
database instance between connections to a path; the sink's single connection, under
its lock, is that), and gets a closed connection back: reopen with `warehouse.connect`.

What this cannot reach: blocks the filesystem freed (the old file's inode, an old WAL)
until it reuses them, copy-on-write snapshots, and backups. Keep the warehouse on an
encrypted volume, and expire backups within the retention (docs/auditors.md).

When to compact: `quietwire retention` after every run that deleted rows; the sink
(`ErasureCompactor`) after applying deletion requests, at most once per interval.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from warehouse._schema import connect

__all__ = [
    "Compaction",
    "CompactionError",
    "ErasureCompactor",
    "compact",
    "pending_erasures",
    "record_erasure",
]

_ALIAS = "qw_compacted"


class CompactionError(Exception):
    """The warehouse could not be rewritten; the original file is left as it was.

    `connection_closed`: the rewrite failed after closing the caller's connection
    (another process took the file at that moment); reopen it to go on.
    """

    def __init__(self, message: str, *, connection_closed: bool = False) -> None:
        super().__init__(message)
        self.connection_closed = connection_closed


@dataclass(frozen=True, slots=True)
class Compaction:
    """One rewrite of the warehouse into a fresh file."""

    compacted_at: datetime
    bytes_before: int
    """The file and its WAL before the rewrite."""
    bytes_after: int
    rows: int
    """Rows copied, over every table (each checked against the original)."""
    erasures: int
    """Pending erasures (deletion requests, retention runs) this rewrite completed."""


def record_erasure(
    conn: duckdb.DuckDBPyConnection,
    source: Literal["deletion_request", "retention"],
    source_id: str,
    rows: int,
    at: datetime | None = None,
    *,
    device_id: str = "",
) -> None:
    """Note, inside the deleting transaction, that `rows` deleted rows still occupy bytes
    in the file until the next `compact`. `device_id`: the device of a deletion request
    (its request ids are its own); '' for a retention run."""
    conn.execute(
        "INSERT OR IGNORE INTO erasures (source, source_id, device_id, deleted_at, "
        "rows_deleted, erased_at) VALUES (?, ?, ?, ?, ?, NULL)",
        [source, source_id, device_id, at or datetime.now(UTC), rows],
    )


def _scalars(conn: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    # fetchall, not fetchone: a result left unfinished on the connection makes DuckDB
    # refuse the next relation (`conn.sql(...)`) a caller of the sink's connection runs.
    ((*row,),) = conn.execute(sql).fetchall()
    return tuple(row)


def pending_erasures(conn: duckdb.DuckDBPyConnection) -> int:
    """Deletions whose bytes are still in the file (no rewrite since)."""
    (n,) = _scalars(conn, "SELECT count(*) FROM erasures WHERE erased_at IS NULL")
    return int(n)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tables(conn: duckdb.DuckDBPyConnection, database: str) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'"
        " AND NOT temporary ORDER BY table_name",
        [database],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _fingerprint(conn: duckdb.DuckDBPyConnection, qualified: str) -> tuple[int, int]:
    """(rows, sum of row hashes): equal for equal multisets of rows, in any order."""
    rows, digest = _scalars(
        conn, f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM {qualified} AS t"
    )
    return int(rows), int(digest)


def _copy_and_check(conn: duckdb.DuckDBPyConnection, target: Path, now: datetime) -> int:
    """Copy the open database into `target`, checked table by table; returns rows copied."""
    (name,) = _scalars(conn, "SELECT current_database()")
    database = str(name)
    literal = "'" + str(target).replace("'", "''") + "'"
    conn.execute(f"ATTACH {literal} AS {_ALIAS}")
    try:
        conn.execute(f"COPY FROM DATABASE {_quote_ident(database)} TO {_ALIAS}")
        source_tables = _tables(conn, database)
        if _tables(conn, _ALIAS) != source_tables:
            raise CompactionError("the copy does not hold the same tables")
        rows = 0
        for table in source_tables:
            name = _quote_ident(table)
            before = _fingerprint(conn, f"{_quote_ident(database)}.main.{name}")
            after = _fingerprint(conn, f"{_ALIAS}.main.{name}")
            if before != after:
                raise CompactionError(f"table {table}: the copy differs ({after} != {before})")
            rows += before[0]
        conn.execute(
            f"UPDATE {_ALIAS}.main.erasures SET erased_at = ? WHERE erased_at IS NULL", [now]
        )
    finally:
        conn.execute(f"DETACH {_ALIAS}")
    return rows


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap(path: Path, fresh: Path) -> None:
    """Rename `fresh` over `path` while holding `path`'s lock, as DuckDB takes it."""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise CompactionError(
                f"{path}: another process opened the warehouse during the rewrite",
                connection_closed=True,
            ) from exc
        try:
            # The WAL was emptied by the checkpoint and the close; one left over must not
            # be replayed onto the new file.
            _remove(_wal(path))
            _fsync(fresh)
            os.replace(fresh, path)
            _fsync(path.parent, directory=True)
        except OSError as exc:
            raise CompactionError(
                f"{path}: cannot replace the warehouse with its rewrite: {exc}",
                connection_closed=True,
            ) from exc
    finally:
        os.close(fd)


def compact(
    conn: duckdb.DuckDBPyConnection, path: Path | str, *, now: datetime | None = None
) -> Compaction:
    """Rewrite the warehouse `conn` has open (the file `path`) into a fresh file without
    the bytes of deleted rows, and close `conn` (see the module docstring).

    Raises `CompactionError`, the file untouched, if the copy fails or differs from the
    original (`conn` still open), or if another process takes the file once `conn` is
    closed (`connection_closed`).
    """
    path = Path(path)
    at = now or datetime.now(UTC)
    fresh = path.with_name(path.name + ".compacting")
    for stale in (fresh, _wal(fresh)):  # left by a crash during an earlier rewrite
        _remove(stale)
    try:
        conn.execute("CHECKPOINT")
        bytes_before = _size(path) + _size(_wal(path))
        erasures = pending_erasures(conn)
        rows = _copy_and_check(conn, fresh, at)
    except (duckdb.Error, CompactionError) as exc:
        _remove(fresh)
        _remove(_wal(fresh))
        if isinstance(exc, CompactionError):
            raise
        raise CompactionError(f"{path}: cannot rewrite the warehouse: {exc}") from exc
    conn.close()
    try:
        _swap(path, fresh)
    except BaseException:
        _remove(fresh)
        raise
    return Compaction(at, bytes_before, _size(path), rows, erasures)


class ErasureCompactor:
    """When a long-running writer (the sink) rewrites its file: when deletions are
    pending and at least `min_interval` seconds have passed since its last rewrite.

    The first deletion is erased at once; later ones within the interval wait for the
    next check after it (a write, an idle poll, or closing), so a burst of consent
    revocations costs one rewrite per interval, not one per message.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        min_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must be >= 0")
        self.path = Path(path)
        self.min_interval = min_interval
        self._clock = clock
        self._last: float | None = None

    def due(self, conn: duckdb.DuckDBPyConnection, *, force: bool = False) -> bool:
        """Whether to rewrite now: deletions pending, and the interval passed (or `force`)."""
        waiting = self._last is not None and self._clock() - self._last < self.min_interval
        if waiting and not force:
            return False
        return pending_erasures(conn) > 0

    def maybe_compact(
        self, conn: duckdb.DuckDBPyConnection, *, force: bool = False
    ) -> tuple[duckdb.DuckDBPyConnection, Compaction | None]:
        """Rewrite if `due`; returns the connection to use from now on (a new one after a
        rewrite) and what the rewrite did. A failed rewrite raises `CompactionError`
        (see `compact` for the state of `conn`) and is tried again after the interval."""
        if not self.due(conn, force=force):
            return conn, None
        self._last = self._clock()
        done = compact(conn, self.path)
        return connect(self.path), done
