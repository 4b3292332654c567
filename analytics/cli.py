"""The analytics commands of the `quietwire` command line: fleet reports from a warehouse
file, retention (`_retention_cli`) and the auditor's view of the audit log (`_audit_cli`).

The `quietwire` entry point (`quietwire.cli`) adds the demo, which drives client and ingest
and so cannot live here (analytics only reads stored data)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from analytics._audit_cli import audit_app
from analytics._canary_cli import CANARY_HELP, canary
from analytics._cli_support import check_output_path, fail
from analytics._cost_cli import cost_app
from analytics._drift_cli import DRIFT_HELP, drift
from analytics._errors import AnalyticsError
from analytics._html import render_html
from analytics._intervals import check_level
from analytics._query_cli import QUERY_HELP, QueryFormat, emit, query_app
from analytics._reader import open_warehouse
from analytics._report import build_report, render_json, render_table
from analytics._retention_cli import RETENTION_HELP, retention
from auditlog import AuditLog, AuditLogError
from policies import DEFAULT_POLICY_PATH, PolicyError, load_policy

__all__ = ["app", "fail"]

app = typer.Typer(
    name="quietwire",
    help="Quietwire: privacy-preserving telemetry. Fleet reports with honest intervals, "
    "drift, canary verdicts, cost, single queries, the demo, retention, the device "
    "ledger's reset, and the audit log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class OutputFormat(StrEnum):
    """What `report` prints on stdout."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


@app.command()
def report(
    db: Annotated[Path, typer.Option("--db", help="Warehouse file (DuckDB) to read.")],
    output: Annotated[
        OutputFormat,
        typer.Option(
            "--format",
            help="table: a per-cell summary over all windows, then devices per window (TPM "
            "or software key) and releases withheld; json: one object with `cells` (every "
            "released cell per window, buckets included, with its privacy model and "
            "mechanism), `fleet`, `basis` (devices, releases withheld) and `coverage`; "
            "csv: the cells of the json.",
        ),
    ] = OutputFormat.TABLE,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a self-contained HTML report with plots here."),
    ] = None,
    signal: Annotated[
        str | None, typer.Option("--signal", help="Only this signal (default: all).")
    ] = None,
    level: Annotated[
        float, typer.Option("--level", help="Confidence level of the intervals, in (0, 1).")
    ] = 0.95,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="Policy whose canary rules, cost model and retention the HTML report's "
            "drift, canary, cost and audit sections use (with --html only).",
            show_default="the packaged policies/default.yaml",
        ),
    ] = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(
            "--audit-log",
            help="The ingest's audit log, for the HTML report's chain check (with --html only).",
        ),
    ] = None,
) -> None:
    """Fleet totals per signal and cell, with confidence intervals from the DP noise.

    With --html the page also holds drift between model versions, the canary's verdict,
    cost per inference with a what-if, and retention and audit status."""
    if html is None:
        # Only the HTML report's sections read them: taken silently, a broken policy or
        # audit log would look checked.
        given = [o for o, v in (("--policy", policy), ("--audit-log", audit_log)) if v is not None]
        if given:
            verb = "apply" if len(given) > 1 else "applies"
            raise fail(
                f"{' and '.join(given)} only {verb} to the HTML report's sections: add "
                "--html FILE, or leave them out"
            )
    else:
        check_output_path("--html", html, makes_directories=True)
    try:
        level = check_level(level)
        rules = load_policy(policy or DEFAULT_POLICY_PATH) if html is not None else None
        audit = AuditLog(audit_log, read_only=True) if audit_log is not None else None
    except (AnalyticsError, PolicyError, AuditLogError) as exc:
        raise fail(str(exc)) from None
    try:
        conn = open_warehouse(db)
    except AnalyticsError as exc:
        if audit is not None:
            audit.close()
        raise fail(str(exc)) from None
    try:
        # On a terminal, a spinner on stderr while the warehouse is read (seconds for
        # millions of rows, more with the HTML's drift and cost sections).
        with Console(stderr=True).status(f"Reading {db}..."):
            rep = build_report(
                conn, level=level, signal=signal, source=str(db), policy=rules, audit=audit
            )
    except (AnalyticsError, AuditLogError) as exc:
        raise fail(str(exc)) from None
    finally:
        conn.close()
        if audit is not None:
            audit.close()
    if signal is not None and rep.totals.is_empty():
        raise fail(f"no released values for signal {signal!r} in {db}")
    if output is OutputFormat.JSON:
        typer.echo(render_json(rep))
    elif output is OutputFormat.CSV:
        emit(rep.totals, QueryFormat.CSV, "cells")
    else:
        console = Console()
        if not console.is_terminal:
            # Piped: rich would assume 80 columns and cut the cells' columns.
            console = Console(width=140)
        render_table(rep, console)
    if html is not None:
        try:
            written = render_html(rep, html)
        except OSError as exc:
            raise fail(f"cannot write {html}: {exc.strerror or exc}") from None
        typer.echo(f"HTML report written to {written}", err=True)


app.command(help=RETENTION_HELP)(retention)
app.command(help=CANARY_HELP)(canary)
app.command(help=DRIFT_HELP)(drift)
app.add_typer(audit_app, name="audit")
app.add_typer(cost_app, name="cost")
app.add_typer(query_app, name="query", help=QUERY_HELP)
