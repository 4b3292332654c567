"""The bytes of a warehouse as a disk scan would see them: the file and everything beside
it named after it (its WAL, a rewrite's leftover, DuckDB's spill directory)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["warehouse_bytes"]


def warehouse_bytes(path: Path) -> bytes:
    """Every byte of `path` and of the files and directories named `<path>*` beside it."""
    found: list[Path] = []
    for p in sorted(path.parent.iterdir()):
        if not p.name.startswith(path.name):
            continue
        found.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return b"".join(p.read_bytes() for p in found)
