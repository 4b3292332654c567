"""Whether a path holds a DuckDB database, told from its first bytes before DuckDB opens it.

DuckDB recognises an SQLite file by its header and, to read it, loads its `sqlite`
extension, downloading it from the network if it is not installed. Pointing a command
at the wrong file (an audit log, say) must neither reach the network nor end in that
error, so a file whose header is not DuckDB's is refused here with what it looks like.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["duckdb_file_problem"]

_DUCKDB_MAGIC = b"DUCK"
"""At bytes 8-12 of every DuckDB database file (after the header's checksum)."""
_KNOWN = (
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"PAR1", "a Parquet file"),
)


def duckdb_file_problem(path: Path | str) -> str | None:
    """Why `path` cannot be opened as a DuckDB database, or None: a missing or empty
    file (DuckDB creates a database there) or one with DuckDB's header."""
    p = Path(path)
    if p.is_dir():
        return "a directory, not a DuckDB file"
    if not p.exists():
        return None
    if not p.is_file():
        return "not a regular file, so not a DuckDB file"
    try:
        with p.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if not head or head[8:12] == _DUCKDB_MAGIC:
        return None
    for magic, what in _KNOWN:
        if head.startswith(magic):
            return f"not a DuckDB file (it is {what})"
    return "not a DuckDB file"
