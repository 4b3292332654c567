"""`quietwire cost`: what each route costs, a FOCUS export, and a what-if.

    quietwire cost --db PATH [--policy P] [--format table|json|csv] [--level L]
                   [--since ISO] [--until ISO]
    quietwire cost export --db PATH --focus out.csv|out.parquet [...]
    quietwire cost what-if --db PATH --move-cloud 0.3 --to edge|local [--format ...]

`--db` is required by all three; it may come before the subcommand's name too
(`quietwire cost --db PATH export ...`). Prices come from the policy's `cost:` section
(`policies.CostPolicy`); use from the warehouse (`analytics._cost`). Bad input (a
missing warehouse, a policy without a cost model, a share outside [0, 1], an unknown
target or export suffix) is one line on stderr and exit code 2; a missing `--db` is
Click's usage error ("Missing option '--db'"), exit code 2, as for the other commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import duckdb
import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from analytics._cli_support import check_output_path, check_range, fail, parse_time
from analytics._cost import cost_breakdown
from analytics._cost_focus import focus_format, focus_rows, write_focus
from analytics._cost_whatif import check_move, cost_what_if
from analytics._errors import AnalyticsError
from analytics._intervals import check_level
from analytics._reader import open_warehouse
from policies import DEFAULT_POLICY_PATH, CostPolicy, PolicyError, load_policy

__all__ = ["cost_app", "render_frame"]

cost_app = typer.Typer(
    name="cost",
    help="What each route costs per inference, per 1,000 tokens and in total, with "
    "intervals from the DP noise; a FOCUS export; a what-if for moving cloud traffic. "
    "Without a subcommand: the cost report.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class CostFormat(StrEnum):
    """What the report and the what-if print on stdout."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


DbOption = Annotated[
    Path,
    typer.Option(
        "--db",
        help="Warehouse file (DuckDB) to read (or give it before the subcommand's name).",
        show_default=False,
    ),
]
"""A subcommand's `--db`: required (no default). A `--db` before the subcommand's name
fills it (`cost` passes it on through the context's default map)."""
ReportDbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="Warehouse file (DuckDB) to read. Required: here, or after the subcommand's "
        "name (export, what-if).",
        show_default=False,
    ),
]
"""`cost`'s own `--db`: not required at the group's level, so that `quietwire cost export
--db PATH` parses; `cost` checks it itself when it runs the report."""
_SUBCOMMANDS = ("export", "what-if")
PolicyOption = Annotated[
    Path,
    typer.Option(
        "--policy",
        help="Policy whose cost: section prices the routes.",
        show_default="policies/default.yaml",
    ),
]
FormatOption = Annotated[CostFormat, typer.Option("--format", help="table, json or csv.")]
LevelOption = Annotated[
    float, typer.Option("--level", help="Confidence level of the intervals, in (0, 1).")
]
SinceOption = Annotated[
    str | None,
    typer.Option("--since", metavar="ISO", help="Only windows starting at or after this time."),
]
UntilOption = Annotated[
    str | None,
    typer.Option("--until", metavar="ISO", help="Only windows ending at or before this time."),
]


def _cost_model(policy: Path) -> CostPolicy:
    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        raise fail(str(exc)) from None
    if loaded.cost is None:
        raise fail(f"{policy}: the policy has no cost: section (prices per route)")
    return loaded.cost


def _open(db: Path) -> duckdb.DuckDBPyConnection:
    try:
        return open_warehouse(db)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None


def _level(level: float) -> float:
    try:
        return check_level(level)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None


def _iso(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        for c, t in frame.schema.items()
        if isinstance(t, pl.Datetime)
    )


def _num(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _count(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _range(row: dict[str, Any], name: str, fmt: Callable[[Any], str] = _num) -> str:
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    if low is None or high is None:
        return "not estimable"
    return f"[{fmt(low)}, {fmt(high)}]"


def render_frame(frame: pl.DataFrame, output: CostFormat, table: Table | None) -> str | None:
    """json or csv text of `frame` (UTC times as ISO 8601); None for a table (printed)."""
    if output is CostFormat.JSON:
        return json.dumps(_iso(frame).to_dicts(), indent=2)
    if output is CostFormat.CSV:
        return _iso(frame).write_csv()
    console = Console()
    if not console.is_terminal:
        # Piped: rich would assume 80 columns and cut the columns.
        console = Console(width=160)
    console.print(table)
    return None


def _report_table(frame: pl.DataFrame, level: float) -> Table:
    currency = frame["currency"][0] if frame.height else ""
    table = Table(
        title=f"Cost per route and model version ({currency}; intervals at {level:.0%})",
        caption="Estimates from DP telemetry at the policy's list prices, not an invoice.",
    )
    for name in (
        "period",
        "region",
        "route",
        "model",
        "requests",
        "cost",
        "interval",
        "per inference",
        "interval",
        "per 1K tokens",
        "interval",
    ):
        table.add_column(name)
    for row in frame.iter_rows(named=True):
        if not row["priced"]:
            continue
        table.add_row(
            row["charge_period_start"].strftime("%Y-%m-%d"),
            row["region"],
            row["route"],
            row["model"],
            _count(row["requests"]),
            _num(row["cost"]),
            _range(row, "cost"),
            _num(row["cost_per_inference"]),
            _range(row, "cost_per_inference"),
            _num(row["cost_per_1k_tokens"]),
            _range(row, "cost_per_1k_tokens"),
        )
    return table


_LEFT_OUT = (
    "cells left out: priced cells whose use per request is not estimable at the "
    "what-if's level (every estimate at 1 - alpha/k, k = {k} estimates), e.g. a model "
    "version with few requests, are in no sum; cloud cells whose target cell (same "
    "region and model version) is not estimable stay on cloud."
)


def _what_if_table(frame: pl.DataFrame, level: float) -> Table:
    left_out = frame.filter(pl.col("cells_left_out") > 0)
    caption = _LEFT_OUT.format(k=left_out["estimates"].max()) if left_out.height else None
    table = Table(title=f"What-if: cloud traffic moved (intervals at {level:.0%})", caption=caption)
    for name in (
        "period",
        "move",
        "moved requests",
        "baseline",
        "projected",
        "change",
        "cells left out",
    ):
        table.add_column(name)
    for row in frame.iter_rows(named=True):
        table.add_row(
            row["charge_period_start"].strftime("%Y-%m-%d"),
            f"{row['share']:.0%} of cloud to {row['target']}",
            f"{_count(row['moved_requests'])} {_range(row, 'moved_requests', _count)}",
            f"{_num(row['baseline_cost'])} {_range(row, 'baseline_cost')}",
            f"{_num(row['projected_cost'])} {_range(row, 'projected_cost')}",
            f"{_num(row['change'])} {_range(row, 'change')} {row['currency']}",
            str(row["cells_left_out"]) if row["cells_left_out"] else "none",
        )
    return table


@cost_app.callback()
def cost(
    ctx: typer.Context,
    db: ReportDbOption = None,
    policy: PolicyOption = DEFAULT_POLICY_PATH,
    output: FormatOption = CostFormat.TABLE,
    level: LevelOption = 0.95,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Cost per charge period, region, route and model version, with intervals."""
    if ctx.invoked_subcommand is not None:
        if db is not None:
            # Click makes the subcommand's context after this callback: its required
            # --db defaults to this one (one given after its name wins).
            defaults = dict(ctx.default_map or {})
            for name in _SUBCOMMANDS:
                defaults[name] = {**defaults.get(name, {}), "db": str(db)}
            ctx.default_map = defaults
        return
    if db is None:
        ctx.fail("Missing option '--db'.")  # as Click says it for the subcommands
    frame = _breakdown(db, policy, level, since, until)
    text = render_frame(frame, output, _report_table(frame, level))
    if text is not None:
        typer.echo(text, nl=False)


def _breakdown(
    db: Path, policy: Path, level: float, since: str | None, until: str | None
) -> pl.DataFrame:
    level = _level(level)
    start, end = parse_time("--since", since), parse_time("--until", until)
    check_range(start, end, "--since", "--until")
    model = _cost_model(policy)
    conn = _open(db)
    try:
        frame = cost_breakdown(conn, model, level=level, since=start, until=end)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    finally:
        conn.close()
    if frame.is_empty():
        raise fail(f"no released requests ({model.requests_signal}) in {db}")
    return frame


@cost_app.command("export")
def export(
    focus: Annotated[
        Path,
        typer.Option("--focus", help="Write FOCUS rows here: a .csv or .parquet file."),
    ],
    db: DbOption,
    policy: PolicyOption = DEFAULT_POLICY_PATH,
    level: LevelOption = 0.95,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Export the cost as FinOps FOCUS rows (CSV or Parquet, by the file's suffix)."""
    try:
        focus_format(focus)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    check_output_path("--focus", focus)
    frame = _breakdown(db, policy, level, since, until)
    rows = focus_rows(frame, _cost_model(policy))
    try:
        written = write_focus(rows, focus)
    except OSError as exc:
        raise fail(f"cannot write {focus}: {exc.strerror or exc}") from None
    typer.echo(f"{rows.height} FOCUS rows written to {written}", err=True)


@cost_app.command("what-if")
def what_if(
    move_cloud: Annotated[
        float,
        typer.Option("--move-cloud", help="Share of cloud traffic to move, in [0, 1]."),
    ],
    to: Annotated[str, typer.Option("--to", help="Target route: edge or local.")],
    db: DbOption,
    policy: PolicyOption = DEFAULT_POLICY_PATH,
    output: FormatOption = CostFormat.TABLE,
    level: LevelOption = 0.95,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Project each charge period's cost if a share of cloud traffic moved to edge or local."""
    try:
        check_move(move_cloud, to)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    level = _level(level)
    start, end = parse_time("--since", since), parse_time("--until", until)
    check_range(start, end, "--since", "--until")
    model = _cost_model(policy)
    conn = _open(db)
    try:
        frame = cost_what_if(
            conn, model, share=move_cloud, target=to, level=level, since=start, until=end
        )
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    finally:
        conn.close()
    if frame.is_empty():
        raise fail(f"no released requests ({model.requests_signal}) in {db}")
    text = render_frame(frame, output, _what_if_table(frame, level))
    if text is not None:
        typer.echo(text, nl=False)
