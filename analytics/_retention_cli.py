"""`quietwire retention`: delete each tier's released values past the policy's retention.

Nothing runs this by itself, on purpose: the sink only ever adds rows and applies
deletion requests, so a replayed topic, a consumer with a wrong clock or a half-rolled
policy can never destroy data by the sink's hand. Operators run it daily from cron or a
systemd timer (docs/analytics.md), with the policy the fleet runs under; `--dry-run`
says what it would delete.

A run is recorded in `retention_runs` (in the deleting transaction), the file is then
rewritten so the deleted bytes are gone (`_auditor_retention.run_retention`), and with
`--audit-log` the run is appended to the ingest's hash-chained log, one entry per tier.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from rich.console import Console
from rich.table import Table

from analytics._auditor_retention import RetentionOutcome, retention_records, run_retention
from analytics._cli_support import fail, parse_time
from analytics._errors import AnalyticsError
from analytics._reader import open_warehouse
from auditlog import AuditLog, AuditLogError, AuditRecord
from policies import DEFAULT_POLICY_PATH, PolicyError, load_policy
from schemas import Tier
from warehouse import count_past_retention, retention_cutoff, rows_by_tier

__all__ = ["RETENTION_HELP", "parse_now", "retention"]

# Paragraphs without hard line breaks: Typer's rich help keeps them as typed.
RETENTION_HELP = (
    "Delete released values past their tier's retention. Run it daily (cron, systemd "
    "timer): the sink never deletes.\n\n"
    "A value is past retention when its window ended more than its tier's "
    "retention.days (from --policy) before --now. Prints, per tier, the days kept, the "
    "cutoff, the rows deleted (or, with --dry-run, that would be) and the rows left.\n\n"
    "Each run is recorded in the warehouse (table retention_runs) and, with --audit-log, "
    "as one `retention` entry per tier in the ingest's audit log. The file is then "
    "rewritten so that deleted values are physically gone from it (with those of "
    "deletion requests the sink applied and had not erased yet).\n\n"
    "Needs the warehouse's write lock (except with --dry-run): DuckDB allows one "
    "writing process, so stop the sink or embedded ingest holding the file for the run. "
    "Exit 2 on a missing or locked warehouse, a missing audit log, a bad policy or a bad "
    "--now; exit 1 if rows were deleted but the rewrite or the audit entry failed."
)


def parse_now(text: str | None) -> datetime:
    """`--now`: an ISO 8601 time with a UTC offset (`Z` too); the current time if None."""
    parsed = parse_time("--now", text)
    return datetime.now(UTC) if parsed is None else parsed


_AHEAD = timedelta(hours=1)
"""How far ahead of this machine's clock a deleting run's `--now` may be (clock skew)."""


def _utc_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _open_audit(path: Path) -> AuditLog:
    """The ingest's existing audit log, opened to append; never creates one."""
    try:
        AuditLog(path, read_only=True).close()  # exists, and is a Quietwire audit log
        return AuditLog(path)
    except (AuditLogError, sqlite3.Error) as exc:
        raise fail(f"--audit-log {exc}") from None


def retention(
    db: Annotated[Path, typer.Option("--db", help="Warehouse file (DuckDB) to prune.")],
    policy: Annotated[
        Path,
        typer.Option(
            "--policy",
            help="Policy whose retention.days apply (the fleet's policy file).",
            show_default="policies/default.yaml",
        ),
    ] = DEFAULT_POLICY_PATH,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            metavar="ISO",
            help="Reference time, ISO 8601 with a UTC offset (default: the current time).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Count what would be deleted; change nothing."),
    ] = False,
    audit_log: Annotated[
        Path | None,
        typer.Option(
            "--audit-log",
            help="The ingest's audit log (<state_dir>/audit.sqlite3): append one "
            "`retention` entry per tier. Must exist. Not used with --dry-run.",
        ),
    ] = None,
) -> None:
    """Delete released values past their tier's retention (`RETENTION_HELP`)."""
    at = parse_now(now)
    if not dry_run and at > datetime.now(UTC) + _AHEAD:
        # Deletion is for good (the file is rewritten): a date ahead would delete what
        # has not reached its retention yet. A dry run may look ahead.
        raise fail(
            f"--now {_utc_text(at)} is ahead of this machine's clock: it would delete data "
            "before its tier's retention ends; --dry-run shows what it would delete"
        )
    try:
        days = load_policy(policy).retention.days
    except PolicyError as exc:
        raise fail(str(exc)) from None
    audit = _open_audit(audit_log) if audit_log is not None and not dry_run else None
    try:
        conn = open_warehouse(db, writable=not dry_run)
    except AnalyticsError as exc:
        if audit is not None:
            audit.close()
        raise fail(str(exc)) from None
    outcome: RetentionOutcome | None = None
    try:
        if dry_run:
            try:
                counts = count_past_retention(conn, days, at)
                kept = rows_by_tier(conn)
            finally:
                conn.close()
        else:
            outcome = run_retention(conn, db, days, at)
            counts, kept = outcome.run.by_tier, outcome.kept
    except duckdb.Error as exc:
        if audit is not None:
            audit.close()
        raise fail(f"{db}: retention failed, nothing deleted: {exc}") from None

    table = Table(
        title=f"retention at {_utc_text(at)} ({'dry run' if dry_run else 'applied'}): {db}"
    )
    table.add_column("tier", no_wrap=True)
    table.add_column("keep (days)", justify="right")
    table.add_column("cutoff: window end before", no_wrap=True)
    table.add_column("would delete" if dry_run else "deleted", justify="right")
    table.add_column("rows now" if dry_run else "rows left", justify="right")
    for tier in Tier:
        if tier not in days:
            continue
        table.add_row(
            tier.value,
            str(days[tier]),
            _utc_text(retention_cutoff(days[tier], at)),
            str(counts.get(tier.value, 0)),
            str(kept.get(tier.value, 0)),
        )
    Console().print(table)
    total = sum(counts.values())
    verb = "would be deleted (dry run)" if dry_run else "deleted"
    typer.echo(f"{total} released value{'' if total == 1 else 's'} {verb}")
    if outcome is not None:
        _report_erasure(outcome)
        if audit is not None:
            _append_audit(audit, retention_records(outcome, db))
        if outcome.problem is not None:
            raise typer.Exit(code=1)


def _report_erasure(outcome: RetentionOutcome) -> None:
    typer.echo(f"recorded as retention run {outcome.run.run_id}")
    done = outcome.compaction
    if done is not None:
        n = done.erasures
        typer.echo(
            f"file rewritten without the deleted values ({n} deletion{'' if n == 1 else 's'} "
            f"erased; {done.bytes_before} -> {done.bytes_after} bytes)"
        )
    elif outcome.problem is not None:
        typer.echo(
            "quietwire: error: rows deleted and recorded, but the file was not rewritten: "
            f"their bytes remain until the next run ({outcome.problem})",
            err=True,
        )


def _append_audit(audit: AuditLog, records: list[AuditRecord]) -> None:
    try:
        entries = audit.append_many(records)
    except (AuditLogError, sqlite3.Error) as exc:
        typer.echo(
            "quietwire: error: rows deleted and recorded in retention_runs, but not in the "
            f"audit log {audit.path}: {exc}",
            err=True,
        )
        raise typer.Exit(code=1) from None
    finally:
        audit.close()
    typer.echo(f"audit log {audit.path}: entries {entries[0].seq}-{entries[-1].seq} appended")
