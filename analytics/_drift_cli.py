"""`quietwire drift`: did a histogram signal drift between two sides of a warehouse?

Each side is `--a`/`--b` labels (label=value, repeatable) and an optional time range
(`--a-since`/`--a-until`, `--b-since`/`--b-until`); `--where` labels apply to both. Two
model versions: `--where route=local --a model=X --b model=Y`; two time ranges: the
same labels and two ranges. The test is `analytics.drift_test`.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from analytics._cli_support import check_range, fail, parse_time
from analytics._drift import DRIFT, DriftResult, DriftSide, drift_test
from analytics._drift_stats import Positions
from analytics._errors import AnalyticsError
from analytics._reader import open_warehouse

__all__ = ["DRIFT_HELP", "drift"]

DRIFT_HELP = (
    "Test whether a histogram signal (latency, tokens) drifted between two sides: two "
    "model versions, two cohorts (any label) or two time ranges.\n\n"
    "Prints, per statistic (PSI, Jensen-Shannon distance, Wasserstein distance over the "
    "buckets, relative mean shift), its value, the threshold its noise allows (the "
    "1-alpha quantile of a null distribution simulated from the declared noise of the "
    "very cells compared, plus sampling noise), its p-value and verdict, and a family "
    "verdict over the estimable statistics. A statistic whose data the noise swamps is "
    "'not estimable'. Exit 2 on a bad warehouse or argument."
)


class DriftFormat(StrEnum):
    """What `drift` prints on stdout."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


class PositionChoice(StrEnum):
    """Where the Wasserstein distance places each bucket."""

    ORDER = "order"
    EDGES = "edges"


def parse_labels(items: list[str] | None, option: str) -> dict[str, str]:
    """`label=value` items as a mapping; a bad item ends the command (exit 2)."""
    out: dict[str, str] = {}
    for item in items or []:
        label, sep, value = item.partition("=")
        if not sep or not label or not value:
            raise fail(f"{option} {item!r} is not label=value (e.g. model=qwen2.5-7b@1.1)")
        if out.get(label, value) != value:
            raise fail(f"{option} gives label {label!r} twice")
        out[label] = value
    return out


def _side(labels: list[str] | None, since: str | None, until: str | None, name: str) -> DriftSide:
    lo = parse_time(f"--{name}-since", since)
    hi = parse_time(f"--{name}-until", until)
    check_range(lo, hi, f"--{name}-since", f"--{name}-until")
    return DriftSide(parse_labels(labels, f"--{name}"), lo, hi)


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


def render_drift_table(result: DriftResult, console: Console) -> None:
    """The result as a rich table with a header and the notes."""
    console.print(f"[bold]{result.signal}[/]: a = {result.a}; b = {result.b}")
    stats = result.statistics
    first = stats.row(0, named=True)
    console.print(
        f"events a ≈ {first['events_a']:,.0f} ({first['devices_a']:,} devices or reports), "
        f"b ≈ {first['events_b']:,.0f} ({first['devices_b']:,}); "
        f"mean a {_fmt(result.mean_a)}, b {_fmt(result.mean_b)}"
    )
    table = Table("statistic", "value", "threshold", "p-value", "verdict")
    for row in stats.iter_rows(named=True):
        style = "bold red" if row["verdict"] == DRIFT else None
        table.add_row(
            row["statistic"],
            _fmt(row["value"]),
            _fmt(row["threshold"]),
            _fmt(row["p_value"], ".3g"),
            row["verdict"],
            style=style,
        )
    console.print(table)
    verdict = f"[bold]{result.verdict}[/]"
    console.print(
        f"verdict: {verdict} at alpha {result.alpha:g} ({result.replicates:,} null replicates, "
        f"Wasserstein positions: {result.positions})"
    )
    for note in result.notes:
        console.print(f"note: {note}")


def drift(
    db: Annotated[Path, typer.Option("--db", help="Warehouse file (DuckDB) to read.")],
    signal: Annotated[
        str,
        typer.Option("--signal", help="Histogram signal, e.g. gen_ai.client.operation.duration."),
    ] = "gen_ai.client.operation.duration",
    where: Annotated[
        list[str] | None, typer.Option("--where", help="label=value for both sides (repeatable).")
    ] = None,
    a: Annotated[
        list[str] | None, typer.Option("--a", help="label=value of side a (repeatable).")
    ] = None,
    b: Annotated[
        list[str] | None, typer.Option("--b", help="label=value of side b (repeatable).")
    ] = None,
    a_since: Annotated[
        str | None, typer.Option("--a-since", help="Side a's windows from (ISO 8601 with offset).")
    ] = None,
    a_until: Annotated[
        str | None, typer.Option("--a-until", help="Side a's windows until (ISO 8601 with offset).")
    ] = None,
    b_since: Annotated[
        str | None, typer.Option("--b-since", help="Side b's windows from (ISO 8601 with offset).")
    ] = None,
    b_until: Annotated[
        str | None, typer.Option("--b-until", help="Side b's windows until (ISO 8601 with offset).")
    ] = None,
    alpha: Annotated[
        float, typer.Option("--alpha", help="False-alarm rate of the test, in (0, 0.5).")
    ] = 0.01,
    replicates: Annotated[
        int, typer.Option("--replicates", help="Simulated null replicates (at least 1/alpha).")
    ] = 2000,
    positions: Annotated[
        PositionChoice,
        typer.Option(
            "--positions",
            help="Wasserstein: buckets by index (order) or at their midpoints (edges).",
        ),
    ] = PositionChoice.ORDER,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="Seed of the simulation (0 or more).")
    ] = None,
    output: Annotated[
        DriftFormat, typer.Option("--format", help="table, json (everything) or csv (statistics).")
    ] = DriftFormat.TABLE,
) -> None:
    """Noise-aware drift test of a histogram signal between two sides."""
    base = parse_labels(where, "--where")
    side_a = _side(a, a_since, a_until, "a")
    side_b = _side(b, b_since, b_until, "b")
    if {**base, **side_a.labels} == {**base, **side_b.labels} and (
        side_a.since,
        side_a.until,
    ) == (side_b.since, side_b.until):
        raise fail("the two sides read the same cells: give --a/--b labels or time ranges")
    try:
        conn = open_warehouse(db)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    try:
        pos: Positions = "edges" if positions is PositionChoice.EDGES else "order"
        result = drift_test(
            conn,
            signal,
            side_a,
            side_b,
            where=base,
            alpha=alpha,
            replicates=replicates,
            positions=pos,
            seed=seed,
        )
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    finally:
        conn.close()
    if output is DriftFormat.JSON:
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
    elif output is DriftFormat.CSV:
        typer.echo(result.statistics.write_csv(), nl=False)
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
        render_drift_table(result, console)
