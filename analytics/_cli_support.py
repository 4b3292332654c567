"""What every `quietwire` subcommand shares: how a bad input ends the command, and how
a time argument, a time range, an output path and the ingest's audit key are read."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import typer
from nacl.signing import VerifyKey

from auditlog import AuditLogError, parse_audit_key

__all__ = ["check_output_path", "check_range", "fail", "parse_time", "read_audit_key"]


def fail(message: str) -> typer.Exit:
    """One line on stderr and exit code 2 (bad input), never a traceback."""
    typer.echo(f"quietwire: error: {message}", err=True)
    return typer.Exit(code=2)


def parse_time(option: str, text: str | None) -> datetime | None:
    """An ISO 8601 time with a UTC offset (as UTC), or None; anything else ends the
    command with one line naming `option`."""
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise fail(
            f"{option} {text!r} is not an ISO 8601 time (e.g. 2026-03-02T00:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise fail(f"{option} {text!r} has no UTC offset; add one (e.g. 2026-03-02T00:00:00Z)")
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not _FIRST_YEAR <= utc.year <= _LAST_YEAR:
        raise fail(
            f"{option} {text!r} is outside the years {_FIRST_YEAR} to {_LAST_YEAR} (UTC) "
            "this command reads"
        )
    return utc


def check_range(
    since: datetime | None, until: datetime | None, since_option: str, until_option: str
) -> None:
    """End the command unless `since` is before `until` (where both are given): an
    empty range reads nothing, and "no data" would hide the mistyped option."""
    if since is not None and until is not None and since >= until:
        raise fail(
            f"{since_option} {since.isoformat()} is not before {until_option} "
            f"{until.isoformat()}: the range holds no windows"
        )


def check_output_path(option: str, path: Path, *, makes_directories: bool = False) -> None:
    """End the command, before any work, unless `path` can be written as a file: not a
    directory, not read-only, in a directory this user may write (with
    `makes_directories`, the writer creates missing directories: the nearest existing
    one must be writable)."""
    if path.is_dir():
        raise fail(f"{option} {path} is a directory; give the path of a file to write")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise fail(f"{option} {path}: the file is not writable")
        return
    parent = path.parent
    if makes_directories:
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
    if not parent.exists():
        raise fail(f"{option} {path}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise fail(f"{option} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise fail(f"{option} {path}: the directory {parent} is not writable")


_FIRST_YEAR, _LAST_YEAR = 1970, 9000
"""The times a command takes: a window, a retention cut-off or a report's time is
never before the epoch, and arithmetic on days stays inside the calendar."""


def read_audit_key(value: str) -> VerifyKey:
    """The ingest's public audit key from `--audit-key`: base64, or a file holding it."""
    text = value
    path = Path(value)
    if path.is_dir():
        raise fail(f"--audit-key {value} is a directory, not a key file (or a base64 key)")
    if path.exists() and not path.is_file():
        raise fail(f"--audit-key {value} is not a regular file (give a key file or a base64 key)")
    if path.is_file():
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"--audit-key {value}: cannot read: {exc}") from None
    try:
        return parse_audit_key(text)
    except AuditLogError as exc:
        raise fail(f"--audit-key: {exc} (give the base64 key or a file holding it)") from None
