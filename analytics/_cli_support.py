"""What every `quietwire` subcommand shares: how a bad input ends the command, and how
a time argument and the ingest's audit key are read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer
from nacl.signing import VerifyKey

from auditlog import AuditLogError, parse_audit_key

__all__ = ["fail", "parse_time", "read_audit_key"]


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


_FIRST_YEAR, _LAST_YEAR = 1970, 9000
"""The times a command takes: a window, a retention cut-off or a report's time is
never before the epoch, and arithmetic on days stays inside the calendar."""


def read_audit_key(value: str) -> VerifyKey:
    """The ingest's public audit key from `--audit-key`: base64, or a file holding it."""
    text = value
    path = Path(value)
    if path.is_file():
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise fail(f"--audit-key {value}: cannot read: {exc}") from None
    try:
        return parse_audit_key(text)
    except AuditLogError as exc:
        raise fail(f"--audit-key: {exc} (give the base64 key or a file holding it)") from None
