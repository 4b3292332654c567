"""The auditor's report (`AuditorReport`) as JSON, CSV (one section) or terminal tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from analytics._auditor import AuditorReport, ChainStatus

__all__ = [
    "Section",
    "chain_frame",
    "render_auditor_csv",
    "render_auditor_json",
    "render_auditor_tables",
    "section_frame",
]


class Section(StrEnum):
    """One part of the report (what `--section` selects)."""

    INVENTORY = "inventory"
    RETENTION = "retention"
    DELETIONS = "deletions"
    CHAIN = "chain"


_CHAIN_SCHEMA: dict[str, pl.DataType] = {
    "path": pl.String(),
    "ok": pl.Boolean(),
    "entries": pl.Int64(),
    "head": pl.String(),
    "anchored": pl.Boolean(),
    "broken_at": pl.Int64(),
    "problem": pl.String(),
    "signed_checkpoints": pl.Int64(),
    "unsigned_entries": pl.Int64(),
}


def chain_frame(report: AuditorReport) -> pl.DataFrame:
    """The chain's verification as a one-row frame (no rows without an audit log)."""
    c = report.chain
    rows = [] if c is None else [{k: getattr(c, k) for k in _CHAIN_SCHEMA}]
    return pl.DataFrame(rows, schema=_CHAIN_SCHEMA)


def section_frame(report: AuditorReport, section: Section) -> pl.DataFrame:
    """The frame behind one section."""
    return {
        Section.INVENTORY: report.inventory,
        Section.RETENTION: report.retention,
        Section.DELETIONS: report.deletions,
        Section.CHAIN: chain_frame(report),
    }[section]


def _iso(value: Any) -> Any:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else value


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _iso(v) for k, v in row.items()} for row in frame.to_dicts()]


def _chain_json(chain: ChainStatus | None) -> dict[str, Any] | None:
    if chain is None:
        return None
    return {k: getattr(chain, k) for k in _CHAIN_SCHEMA}


def render_auditor_json(report: AuditorReport) -> str:
    """The whole report as one JSON object (times in ISO 8601, UTC)."""
    return json.dumps(
        {
            "warehouse": report.source,
            "generated_at": _iso(report.generated_at),
            "erasures_pending": report.erasures_pending,
            "audit_log": _chain_json(report.chain),
            "inventory": _records(report.inventory),
            "retention_runs": _records(report.retention),
            "deletion_requests": _records(report.deletions),
        },
        indent=2,
        ensure_ascii=False,
    )


def render_auditor_csv(report: AuditorReport, section: Section) -> str:
    """One section as CSV with a header row (times in ISO 8601, UTC)."""
    frame = section_frame(report, section)
    return frame.write_csv(datetime_format="%Y-%m-%dT%H:%M:%S%.6f%:z")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(frame: pl.DataFrame, title: str, columns: list[str], caption: str = "") -> Table:
    table = Table(title=title, caption=caption or None, title_justify="left")
    for name in columns:
        numeric = frame.schema[name].is_numeric()
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in frame.select(columns).iter_rows():
        table.add_row(*(_cell(v) for v in row))
    return table


def _chain_line(chain: ChainStatus | None) -> str:
    if chain is None:
        return "audit log: not given (--log): chain not verified, deletions not matched"
    anchored = ", to the anchored head" if chain.anchored else ""
    if chain.ok:
        line = f"audit log {chain.path}: OK, {chain.entries} entries{anchored}; head {chain.head}"
        if chain.signed_checkpoints is None:
            return line + "; checkpoints not verified (--audit-key)"
        unsigned = chain.unsigned_entries or 0
        return (
            line
            + f"; {chain.signed_checkpoints} signed checkpoint(s) verify"
            + (f", {unsigned} entries after the last not yet signed" if unsigned else "")
        )
    if chain.broken_at is not None:
        where = f" at entry seq {chain.broken_at}"
    elif chain.signed_checkpoints is not None and chain.problem and "checkpoint" in chain.problem:
        where = f" after {chain.signed_checkpoints} verified checkpoint(s)"
    else:
        where = " at its end"
    return f"audit log {chain.path}: BROKEN{where}: {chain.problem}"


def render_auditor_tables(report: AuditorReport, console: Console) -> None:
    """Print the summary lines and one table per section."""
    console.print(f"auditor report of {report.source} at {_cell(report.generated_at)}")
    console.print(_chain_line(report.chain))
    pending = report.erasures_pending
    console.print(
        f"deleted but not yet erased from the file: {pending} deletion{'' if pending == 1 else 's'}"
        + (" (the next sink rewrite or retention run erases them)" if pending else "")
    )
    inv = report.inventory
    console.print(
        _table(
            inv,
            "data held, by table, tier and region",
            list(inv.columns),
            "oldest/newest: window start/end (prio_reports: batch start; dead_letters: "
            "recorded); past_retention: rows a retention run now would delete",
        )
    )
    ret = report.retention
    console.print(
        _table(
            ret,
            f"retention runs ({ret['run_id'].n_unique()})",
            [c for c in ret.columns if c != "as_of"],
            "erased_at: when the deleted rows' bytes left the file",
        )
    )
    dels = report.deletions
    console.print(
        _table(
            dels,
            f"deletion requests ({dels.height})",
            [
                "request_id",
                "device_id",
                "tier",
                "requested_at",
                "received_at",
                "rows_deleted",
                "erased_at",
                "audit_seq",
                "status",
            ],
        )
    )
