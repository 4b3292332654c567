"""`quietwire audit`: an auditor's read-only view of the ingest's hash-chained audit log.

    quietwire audit verify --log PATH [--audit-key FILE|BASE64] [--head HEX]
    quietwire audit report --db WAREHOUSE [--log PATH] ...   (analytics._auditor_cli)
    quietwire audit list --log PATH [--device ID] [--action A] [--decision accept|reject]
                         [--reason R] [--format table|json]

The log is the ingest's (`<state_dir>/audit.sqlite3`, `ingest.AuditLog`), opened
read-only: nothing here creates, migrates or writes it. `verify` exits 1 when the chain
is broken (an edited, deleted or reordered entry, or a tail cut off before an anchored
head) or, with the ingest's audit key, when a signed checkpoint does not verify or no
longer matches the chain (the chain rewritten, or cut off before a checkpoint), and 2
on bad input, like every `quietwire` command.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from analytics._auditor_cli import AUDIT_REPORT_HELP, audit_report
from analytics._cli_support import fail, read_audit_key
from auditlog import AUDIT_ACTIONS

if TYPE_CHECKING:  # the audit log package is imported only when an audit command runs
    from auditlog import AuditEntry, AuditLog, AuditReport, ChainReport

__all__ = ["audit_app"]

audit_app = typer.Typer(
    name="audit",
    help="Read the ingest's hash-chained audit log: verify the chain, list decisions; "
    "the auditor's report over the warehouse and the log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DECISIONS: dict[str, Literal["accepted", "rejected", "applied"]] = {
    "accept": "accepted",
    "accepted": "accepted",
    "reject": "rejected",
    "rejected": "rejected",
    "applied": "applied",
}

LogOption = Annotated[
    Path,
    typer.Option(
        "--log", help="The ingest's audit log file (<state_dir>/audit.sqlite3), read-only."
    ),
]


class ListFormat(StrEnum):
    """What `audit list` prints on stdout."""

    TABLE = "table"
    JSON = "json"


def _open(path: Path) -> AuditLog:
    from auditlog import AuditLog, AuditLogError

    try:
        return AuditLog(path, read_only=True)
    except AuditLogError as exc:
        raise fail(str(exc)) from None


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


_VERIFY_HELP = (
    "Recompute every entry's hash and link, check the signed checkpoints, and print the "
    "head. Exit 1 if broken.\n\n"
    "A broken chain is reported with its first broken entry: its seq and what is wrong "
    "with it (edited, missing or reordered), or, with --head, that entries were cut off "
    "the end. With --audit-key (the ingest's public audit key, from GET /v1/audit-key or "
    "`python -m ingest audit-key`, kept where the ingest's operators cannot change it), "
    "every checkpoint's signature is checked and the chain must still hold each signed "
    "head: a chain rewritten with recomputed hashes, or cut off before a checkpoint, or a "
    "checkpoint not made with that key, is broken. Exit 2 on a missing or foreign file, "
    "a bad --head or a bad --audit-key."
)
_LIST_HELP = (
    "List audit entries in order, filtered by device, action, decision and reason.\n\n"
    "Every decision the ingest, the aggregators and retention record is there: "
    + "; ".join(f"{name}: {what}" for name, what in AUDIT_ACTIONS.items())
    + ". Listing does not verify the chain: run `quietwire audit verify`."
)


@audit_app.command(help=_VERIFY_HELP)
def verify(
    log: LogOption,
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            metavar="HEX",
            help="The head hash anchored earlier (64 hex digits): also catches entries "
            "cut off the end of the log.",
        ),
    ] = None,
    audit_key: Annotated[
        str | None,
        typer.Option(
            "--audit-key",
            metavar="FILE|BASE64",
            help="The ingest's public audit key (Ed25519, 32 bytes base64), or a file "
            "holding it: also verify every signed checkpoint against the chain.",
        ),
    ] = None,
) -> None:
    """Verify the audit log's hash chain and checkpoints (see `_VERIFY_HELP`)."""
    from auditlog import AuditLogError, verify_log

    if head is not None:
        head = head.strip().lower()
        if not _HEX64.match(head):
            raise fail(f"--head must be 64 hex digits (a SHA-256), got {head!r}")
    key = read_audit_key(audit_key) if audit_key is not None else None
    audit = _open(log)
    try:
        if key is None:
            report = audit.verify_chain(expected_head=head)
            checked = None
        else:
            checked = verify_log(audit, key, expected_head=head)
            report = checked.chain
    except AuditLogError as exc:  # unreadable (damaged) rather than broken: exit 2
        raise fail(str(exc)) from None
    finally:
        audit.close()
    if not report.ok:
        _broken_chain(report, head)
    if checked is not None and checked.problem is not None:
        typer.echo(f"audit log BROKEN: {checked.problem}")
        typer.echo(f"({checked.checkpoints} checkpoints before it verify)")
        raise typer.Exit(code=1)
    anchored = ", ends at the anchored head" if head is not None else ""
    typer.echo(f"audit log OK: {report.entries} entries{anchored}")
    typer.echo(f"head: {report.head}")
    if checked is None:
        typer.echo("checkpoints: not verified (pass --audit-key to check their signatures)")
    else:
        _checkpoints_ok(checked)


def _broken_chain(report: ChainReport, head: str | None) -> NoReturn:
    if report.broken_at is not None:
        typer.echo(
            f"audit log BROKEN at entry seq {report.broken_at}: {report.problem} "
            f"({report.entries - 1} entries before it verify)"
        )
        typer.echo(f"head of the verified part: {report.head}")
    else:
        typer.echo(f"audit log BROKEN: {report.problem} (entries cut off the end, or replaced)")
        typer.echo(f"head: {report.head} ({report.entries} entries); anchored: {head}")
    raise typer.Exit(code=1)


def _checkpoints_ok(checked: AuditReport) -> None:
    last = checked.last_checkpoint
    if last is None:
        typer.echo("checkpoints: none (the log is empty)")
        return
    typer.echo(
        f"checkpoints: {checked.checkpoints} signed by the audit key, all match the chain; "
        f"the last at seq {last.seq} ({_utc(last.at)}), head {last.head}"
    )
    if checked.uncovered:
        typer.echo(f"{checked.uncovered} entries after it are not yet covered by a signature")


@audit_app.command("list", help=_LIST_HELP)
def list_entries(
    log: LogOption,
    device: Annotated[
        str | None, typer.Option("--device", metavar="ID", help="Only this device id.")
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            "--action",
            metavar="A",
            help=f"Only this action: {', '.join(AUDIT_ACTIONS)}.",
        ),
    ] = None,
    decision: Annotated[
        str | None,
        typer.Option(
            "--decision",
            metavar="accept|reject|applied",
            help="Only accepted, rejected or applied (retention runs) decisions.",
        ),
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            "--reason",
            metavar="R",
            help="Only this reason code (e.g. software_key_refused, device_revoked).",
        ),
    ] = None,
    output: Annotated[
        ListFormat,
        typer.Option(
            "--format",
            help="table: one row per entry; json: a list of records with every field "
            "(at in Unix seconds, exactly as hashed, and as UTC time).",
        ),
    ] = ListFormat.TABLE,
) -> None:
    """List audit entries (see `_LIST_HELP`)."""
    from auditlog import AuditLogError

    if action is not None and action not in AUDIT_ACTIONS:
        raise fail(
            f"--action {action!r} is not an action the audit log records (actions: "
            f"{', '.join(AUDIT_ACTIONS)})"
        )
    wanted = None
    if decision is not None:
        wanted = _DECISIONS.get(decision.strip().lower())
        if wanted is None:
            raise fail(f"--decision must be accept or reject (or applied), got {decision!r}")
    audit = _open(log)
    try:
        entries = audit.entries(device_id=device, action=action, decision=wanted, reason=reason)
    except AuditLogError as exc:
        raise fail(str(exc)) from None
    finally:
        audit.close()
    if output is ListFormat.JSON:
        typer.echo(json.dumps([_record(e) for e in entries], indent=2, ensure_ascii=False))
        return
    n = len(entries)
    table = Table(title=f"{n} audit entr{'y' if n == 1 else 'ies'}", caption=str(log))
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("decision", no_wrap=True)
    table.add_column("device", overflow="fold")
    table.add_column("reason", overflow="fold")
    table.add_column("detail", overflow="fold")
    for e in entries:
        table.add_row(
            str(e.seq),
            datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            _plain(e.action),
            _plain(e.decision),
            _plain(e.device_id or ""),
            _plain(e.reason or ""),
            _plain(e.detail or ""),
        )
    Console().print(table)


def _plain(text: str) -> Text:
    """An entry's text as it is: never read as console markup (`[link=...]`, `[/x]`: a
    refusal's detail may quote what a sender chose), control characters shown escaped."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return Text(text)


def _record(entry: AuditEntry) -> dict[str, object]:
    return {
        "seq": entry.seq,
        "at": entry.at,
        "time": _utc(entry.at),
        "action": entry.action,
        "decision": entry.decision,
        "device_id": entry.device_id,
        "reason": entry.reason,
        "detail": entry.detail,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


audit_app.command("report", help=AUDIT_REPORT_HELP)(audit_report)
