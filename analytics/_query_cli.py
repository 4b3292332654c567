"""`quietwire query ...`: every analytics query function from the command line.

Each subcommand runs one function of the `analytics` package over a warehouse file and
prints its Polars DataFrame as a table, JSON records or CSV:

    quietwire query totals        fleet_totals       every released cell per window
    quietwire query signal-totals signal_totals      a counter's totals by labels
    quietwire query requests      requests_by_route  requests by route and model
    quietwire query grand-totals  grand_totals       a signal over all its cells
    quietwire query means         mean_by_labels     a histogram's mean by labels
    quietwire query fleet-mean    fleet_mean         a histogram's mean over all cells
    quietwire query buckets       histogram_buckets  a histogram's events per bucket
    quietwire query cells         cell_summary       one row per cell over the range
    quietwire query devices       fleet_basis        devices per window by key anchoring
    quietwire query suppressed    fleet_basis        releases withheld per signal
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Protocol

import duckdb
import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from analytics._basis import FleetBasis, fleet_basis
from analytics._cli_support import check_range, fail
from analytics._errors import AnalyticsError
from analytics._held import SignalKind, check_labels_held, check_signal_held, held_signals
from analytics._intervals import check_level
from analytics._means import cell_summary, fleet_mean, mean_by_labels
from analytics._reader import open_warehouse
from analytics._totals import (
    fleet_totals,
    grand_totals,
    histogram_buckets,
    requests_by_route,
    signal_totals,
)

__all__ = ["QUERY_HELP", "query_app"]

QUERY_HELP = "Run one analytics query over a warehouse file: table, JSON or CSV."

query_app = typer.Typer(help=QUERY_HELP, no_args_is_help=True)


class QueryFormat(StrEnum):
    """How a query's frame is printed."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


Db = Annotated[Path, typer.Option("--db", help="Warehouse file (DuckDB) to read.")]
Format = Annotated[QueryFormat, typer.Option("--format", help="table, json (records) or csv.")]
Level = Annotated[
    float, typer.Option("--level", help="Confidence level of the intervals, in (0, 1).")
]
Since = Annotated[
    datetime | None,
    typer.Option("--since", help="Only windows starting at or after this time (UTC)."),
]
Until = Annotated[
    datetime | None,
    typer.Option("--until", help="Only windows ending at or before this time (UTC)."),
]
Signal = Annotated[str, typer.Option("--signal", help="The signal to query.")]
OptSignal = Annotated[str | None, typer.Option("--signal", help="Only this signal (default: all).")]
PerWindow = Annotated[
    bool,
    typer.Option("--per-window/--over-range", help="One row per window, or over the range."),
]


def _by(text: str) -> tuple[str, ...]:
    labels = tuple(x.strip() for x in text.split(",") if x.strip())
    return labels


By = Annotated[
    str, typer.Option("--by", help="Comma-separated labels to group by (e.g. route,model).")
]


def _utc(t: datetime | None) -> datetime | None:
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, ...]:
    """--since and --until as UTC; a range that ends before it starts ends the command."""
    lo, hi = _utc(since), _utc(until)
    check_range(lo, hi, "--since", "--until")
    return lo, hi


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:,.6g}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(frame: pl.DataFrame, output: QueryFormat, title: str) -> None:
    """Print `frame` in the chosen format (the table on a wide console when piped)."""
    if output is QueryFormat.CSV:
        flat = frame.select(
            [
                pl.col(c).cast(pl.String) if isinstance(t, pl.List | pl.Struct) else pl.col(c)
                for c, t in frame.schema.items()
            ]
        )
        typer.echo(flat.write_csv(), nl=False)
        return
    if output is QueryFormat.JSON:
        records = [{k: _jsonable(v) for k, v in r.items()} for r in frame.to_dicts()]
        typer.echo(json.dumps(records, indent=2, default=str))
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    if not frame.height:
        console.print(f"{title}: no rows.")
        return
    table = Table(title=title, title_justify="left")
    for name in frame.columns:
        table.add_column(name, no_wrap=True)
    for row in frame.iter_rows():
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def _run(
    db: Path,
    output: QueryFormat,
    title: str,
    query: Callable[[duckdb.DuckDBPyConnection], pl.DataFrame],
    signal: str | None = None,
    *,
    kind: SignalKind | None = None,
    by: Sequence[str] = (),
    by_signal: str | None = None,
) -> None:
    """Open `db`, check `signal` is one it holds (of `kind`, if given) and that the
    figures of `signal` (or of `by_signal`, where the warehouse holds it) carry every
    label of `by`: a misspelt signal or label, or a counter where a histogram is needed,
    is an error, not an empty answer or one row lumping every cell. Then run `query` and
    print its frame."""
    try:
        conn = open_warehouse(db)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    try:
        if signal is not None:
            check_signal_held(conn, signal, kind)
        labelled = signal or by_signal
        if by and labelled is not None and labelled in held_signals(conn):
            check_labels_held(conn, labelled, by, option="--by")
        frame = query(conn)
    except (AnalyticsError, ValueError) as exc:
        raise fail(str(exc)) from None
    finally:
        conn.close()
    emit(frame, output, title)


def _level(level: float) -> float:
    try:
        return check_level(level)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None


class _Grouped(Protocol):
    """A query over one signal grouped by labels (signal_totals, mean_by_labels, ...)."""

    def __call__(
        self,
        conn: duckdb.DuckDBPyConnection,
        signal: str,
        *,
        by: Sequence[str],
        per_window: bool,
        level: float,
        since: datetime | None,
        until: datetime | None,
    ) -> pl.DataFrame: ...


class _Whole(Protocol):
    """A query over one signal's cells together (grand_totals, fleet_mean)."""

    def __call__(
        self,
        conn: duckdb.DuckDBPyConnection,
        signal: str,
        *,
        per_window: bool,
        level: float,
        since: datetime | None,
        until: datetime | None,
    ) -> pl.DataFrame: ...


class _Every(Protocol):
    """A query over every signal, or one (fleet_totals, cell_summary)."""

    def __call__(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        level: float,
        signal: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> pl.DataFrame: ...


def _grouped(
    name: str,
    query: _Grouped,
    doc: str,
    *,
    by: str,
    per_window: bool,
    what: str,
    kind: SignalKind | None = None,
) -> None:
    """Register `quietwire query NAME --signal S --by L1,L2 ...` running `query`."""

    def command(
        db: Db,
        signal: Signal,
        by: By = by,
        per_window: PerWindow = per_window,
        output: Format = QueryFormat.TABLE,
        level: Level = 0.95,
        since: Since = None,
        until: Until = None,
    ) -> None:
        lv, labels = _level(level), _by(by)
        lo, hi = _window(since, until)
        _run(
            db,
            output,
            f"{signal}: {what} by {by}",
            lambda c: query(
                c, signal, by=labels, per_window=per_window, level=lv, since=lo, until=hi
            ),
            signal,
            kind=kind,
            by=labels,
        )

    command.__doc__ = doc
    query_app.command(name)(command)


def _whole(
    name: str, query: _Whole, doc: str, *, what: str, kind: SignalKind | None = None
) -> None:
    """Register `quietwire query NAME --signal S ...` running `query`."""

    def command(
        db: Db,
        signal: Signal,
        per_window: PerWindow = True,
        output: Format = QueryFormat.TABLE,
        level: Level = 0.95,
        since: Since = None,
        until: Until = None,
    ) -> None:
        lv = _level(level)
        lo, hi = _window(since, until)
        _run(
            db,
            output,
            f"{signal}: {what}",
            lambda c: query(c, signal, per_window=per_window, level=lv, since=lo, until=hi),
            signal,
            kind=kind,
        )

    command.__doc__ = doc
    query_app.command(name)(command)


def _every(name: str, query: _Every, doc: str, *, what: str) -> None:
    """Register `quietwire query NAME [--signal S] ...` running `query`."""

    def command(
        db: Db,
        signal: OptSignal = None,
        output: Format = QueryFormat.TABLE,
        level: Level = 0.95,
        since: Since = None,
        until: Until = None,
    ) -> None:
        lv = _level(level)
        lo, hi = _window(since, until)
        _run(
            db,
            output,
            what,
            lambda c: query(c, level=lv, signal=signal, since=lo, until=hi),
            signal,
        )

    command.__doc__ = doc
    query_app.command(name)(command)


_every(
    "totals",
    fleet_totals,
    "Every released cell summed over the fleet, per window (fleet_totals).",
    what="fleet totals",
)
_grouped(
    "signal-totals",
    signal_totals,
    "A counter's totals grouped by labels (signal_totals).",
    by="route",
    per_window=True,
    what="totals",
    kind="counter",
)
_grouped(
    "means",
    mean_by_labels,
    "A histogram's mean grouped by labels, with a ratio interval (mean_by_labels).",
    by="route,model",
    per_window=True,
    what="mean",
    kind="histogram",
)
_grouped(
    "buckets",
    histogram_buckets,
    "A histogram's events per bucket, grouped by labels (histogram_buckets).",
    by="route,model",
    per_window=False,
    what="events per bucket",
    kind="histogram",
)
_whole(
    "grand-totals",
    grand_totals,
    "A signal's total over all its cells (grand_totals).",
    what="fleet total",
)
_whole(
    "fleet-mean",
    fleet_mean,
    "A histogram's mean over all its cells (fleet_mean).",
    what="fleet mean",
    kind="histogram",
)
_every(
    "cells",
    cell_summary,
    "One row per cell over the range: totals, events and means (cell_summary).",
    what="cell summary",
)


@query_app.command("requests")
def requests_cmd(
    db: Db,
    by: By = "route,model",
    per_window: PerWindow = True,
    output: Format = QueryFormat.TABLE,
    level: Level = 0.95,
    since: Since = None,
    until: Until = None,
) -> None:
    """Inference requests by route and model (requests_by_route)."""
    lv, labels = _level(level), _by(by)
    lo, hi = _window(since, until)
    _run(
        db,
        output,
        f"requests by {by}",
        lambda c: requests_by_route(
            c, by=labels, per_window=per_window, level=lv, since=lo, until=hi
        ),
        by=labels,
        by_signal="inference.requests",  # the signal requests_by_route reads
    )


def _basis(
    db: Path,
    output: QueryFormat,
    title: str,
    since: datetime | None,
    until: datetime | None,
    part: Callable[[FleetBasis], pl.DataFrame],
    signal: str | None = None,
) -> None:
    lo, hi = _window(since, until)
    _run(db, output, title, lambda c: part(fleet_basis(c, signal=signal, since=lo, until=hi)))


@query_app.command("devices")
def devices_cmd(
    db: Db,
    output: Format = QueryFormat.TABLE,
    since: Since = None,
    until: Until = None,
) -> None:
    """Devices per window, by TPM-attested or software key (fleet_basis)."""
    _basis(db, output, "devices per window", since, until, lambda b: b.devices)


@query_app.command("suppressed")
def suppressed_cmd(
    db: Db,
    signal: OptSignal = None,
    output: Format = QueryFormat.TABLE,
    since: Since = None,
    until: Until = None,
) -> None:
    """Releases withheld because a device's privacy budget was spent (fleet_basis)."""
    _basis(db, output, "releases withheld", since, until, lambda b: b.suppressed, signal)
