"""`quietwire audit report`: one command for a compliance auditor.

    quietwire audit report --db WAREHOUSE [--log AUDIT_LOG [--head HEX]
                           [--audit-key FILE|BASE64]]
                           [--policy FILE [--now ISO]]
                           [--format table|json|csv [--section S]]

What data the warehouse holds (by table, tier and region, oldest and newest window),
what retention deleted and when, which deletion requests were applied and whether their
bytes are erased, and whether the audit log's chain verifies (`analytics._auditor`).
Both files are opened read-only. Exit 1 when the chain is broken, 2 on bad input.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from analytics._auditor import build_auditor_report
from analytics._auditor_render import (
    Section,
    render_auditor_csv,
    render_auditor_json,
    render_auditor_tables,
)
from analytics._cli_support import fail, read_audit_key
from analytics._errors import AnalyticsError
from analytics._reader import open_warehouse
from analytics._retention_cli import parse_now
from auditlog import AuditLog, AuditLogError
from policies import PolicyError, load_policy

__all__ = ["AUDIT_REPORT_HELP", "ReportFormat", "audit_report"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

AUDIT_REPORT_HELP = (
    "What data exists, what retention deleted, which deletion requests were applied, "
    "and whether the audit log verifies, in one report.\n\n"
    "Sections: inventory (rows per table, tier and region with the oldest and newest "
    "window; with --policy, rows past retention at --now), retention (each run per tier: "
    "cutoff, rows deleted per table, when, and when the bytes left the file), deletions "
    "(each request the warehouse applied or, with --log, the ingest accepted: rows "
    "deleted, erased or pending, its audit entry; one accepted but not applied is "
    "listed as such) and chain (the audit log verified, to --head if given, and with "
    "--audit-key its signed checkpoints, so a rewrite of the whole chain shows).\n\n"
    "Opens both files read-only. Exit 1 if the chain is broken; 2 on a missing or "
    "foreign file, a bad --head, --audit-key, policy or --now."
)


class ReportFormat(StrEnum):
    """What `audit report` prints on stdout."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def _open_log(path: Path) -> AuditLog:
    try:
        return AuditLog(path, read_only=True)
    except AuditLogError as exc:
        raise fail(str(exc)) from None


def audit_report(
    db: Annotated[Path, typer.Option("--db", help="Warehouse file (DuckDB), read-only.")],
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            help="The ingest's audit log (<state_dir>/audit.sqlite3), read-only: verify "
            "its chain and match deletion requests and retention runs to its entries.",
        ),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            metavar="HEX",
            help="The audit log head anchored earlier (64 hex digits), with --log.",
        ),
    ] = None,
    audit_key: Annotated[
        str | None,
        typer.Option(
            "--audit-key",
            metavar="FILE|BASE64",
            help="The ingest's public audit key (GET /v1/audit-key), or a file holding it, "
            "with --log: also verify the log's signed checkpoints.",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="Policy whose retention.days to count rows past retention by."
        ),
    ] = None,
    now: Annotated[
        str | None,
        typer.Option(
            "--now",
            metavar="ISO",
            help="Reference time for --policy, ISO 8601 with a UTC offset (default: now).",
        ),
    ] = None,
    output: Annotated[
        ReportFormat,
        typer.Option(
            "--format",
            help="table: summary lines and a table per section; json: one object with "
            "every section; csv: the section --section names.",
        ),
    ] = ReportFormat.TABLE,
    section: Annotated[
        Section,
        typer.Option("--section", help="The section --format csv prints."),
    ] = Section.INVENTORY,
) -> None:
    """The auditor's report (see `AUDIT_REPORT_HELP`)."""
    at = parse_now(now)
    if head is not None:
        head = head.strip().lower()
        if log is None:
            raise fail("--head needs --log (the audit log it anchors)")
        if not _HEX64.match(head):
            raise fail(f"--head must be 64 hex digits (a SHA-256), got {head!r}")
    if audit_key is not None and log is None:
        raise fail("--audit-key needs --log (the audit log whose checkpoints it verifies)")
    key = read_audit_key(audit_key) if audit_key is not None else None
    try:
        days = load_policy(policy).retention.days if policy is not None else None
    except PolicyError as exc:
        raise fail(str(exc)) from None
    try:
        conn = open_warehouse(db)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    audit = None
    try:
        audit = _open_log(log) if log is not None else None
        report = build_auditor_report(
            conn,
            audit=audit,
            expected_head=head,
            audit_key=key,
            retention_days=days,
            now=at,
            source=str(db),
        )
    except AuditLogError as exc:  # an audit log SQLite cannot read (damaged)
        raise fail(str(exc)) from None
    finally:
        conn.close()
        if audit is not None:
            audit.close()
    if output is ReportFormat.JSON:
        typer.echo(render_auditor_json(report))
    elif output is ReportFormat.CSV:
        typer.echo(render_auditor_csv(report, section), nl=False)
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)  # piped: rich would cut columns at 80
        render_auditor_tables(report, console)
    if report.chain is not None and not report.chain.ok:
        raise typer.Exit(code=1)
