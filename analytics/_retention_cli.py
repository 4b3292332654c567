"""`quietwire retention`: delete each tier's released values past the policy's retention.

Nothing runs this by itself, on purpose: the sink only ever adds rows and applies
deletion requests, so a replayed topic, a consumer with a wrong clock or a half-rolled
policy can never destroy data by the sink's hand. Operators run it daily from cron or a
systemd timer (docs/analytics.md), with the policy the fleet runs under; `--dry-run`
says what it would delete.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import duckdb
import typer
from rich.console import Console
from rich.table import Table

from analytics._cli_support import fail
from analytics._errors import AnalyticsError
from analytics._reader import open_warehouse
from policies import DEFAULT_POLICY_PATH, PolicyError, load_policy
from schemas import Tier
from warehouse import (
    count_past_retention,
    enforce_retention,
    retention_cutoff,
    rows_by_tier,
)

__all__ = ["RETENTION_HELP", "parse_now", "retention"]

# Paragraphs without hard line breaks: Typer's rich help keeps them as typed.
RETENTION_HELP = (
    "Delete released values past their tier's retention. Run it daily (cron, systemd "
    "timer): the sink never deletes.\n\n"
    "A value is past retention when its window ended more than its tier's "
    "retention.days (from --policy) before --now. Prints, per tier, the days kept, the "
    "cutoff, the rows deleted (or, with --dry-run, that would be) and the rows left.\n\n"
    "Needs the warehouse's write lock (except with --dry-run): DuckDB allows one "
    "writing process, so stop the sink or embedded ingest holding the file for the run. "
    "Exit 2 on a missing or locked warehouse, a bad policy or a bad --now."
)


def parse_now(text: str | None) -> datetime:
    """`--now`: an ISO 8601 time with a UTC offset (`Z` too); the current time if None."""
    if text is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"--now {text!r} is not an ISO 8601 time (e.g. 2026-03-02T00:00:00Z)") from None
    if parsed.tzinfo is None:
        raise fail(f"--now {text!r} has no UTC offset; add one (e.g. 2026-03-02T00:00:00Z)")
    return parsed.astimezone(UTC)


def _utc_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _kept(conn: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return rows_by_tier(conn)


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
) -> None:
    """Delete released values past their tier's retention (`RETENTION_HELP`)."""
    at = parse_now(now)
    try:
        days = load_policy(policy).retention.days
    except PolicyError as exc:
        raise fail(str(exc)) from None
    try:
        conn = open_warehouse(db, writable=not dry_run)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    try:
        if dry_run:
            counts = count_past_retention(conn, days, at)
        else:
            counts = enforce_retention(conn, days, at)
        kept = _kept(conn)
    except duckdb.Error as exc:
        raise fail(f"{db}: retention failed, nothing deleted: {exc}") from None
    finally:
        conn.close()

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
