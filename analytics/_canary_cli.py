"""`quietwire canary`: promote, hold or rollback a canary model version, with the evidence.

The exit code is the verdict, so a rollout pipeline can gate on it without parsing:
0 promote, 3 rollback, 4 hold; 2 is bad input (one line on stderr), as for every
command.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from analytics._canary import CanaryResult, canary_verdict
from analytics._canary_verdict import MetricEvidence, Verdict, effect_text
from analytics._cli_support import check_range, fail, parse_time
from analytics._errors import AnalyticsError
from analytics._reader import open_warehouse
from policies import DEFAULT_POLICY_PATH, CanaryPolicy, PolicyError, load_policy

__all__ = ["CANARY_HELP", "EXIT_CODES", "canary"]

EXIT_CODES = {Verdict.PROMOTE: 0, Verdict.ROLLBACK: 3, Verdict.HOLD: 4}
"""The command's exit code per verdict (2 is bad input)."""

CANARY_HELP = (
    "Judge a canary model version against its baseline, per route: promote, hold or "
    "rollback, with each metric's effect size and interval (DP noise included).\n\n"
    "Metrics, thresholds and minimum evidence come from the policy's canary: section "
    "(default policy: latency +10%, error and exception rates +1 pp, tokens +10%). "
    "Rollback when an interval lies above its threshold; promote when every judged "
    "metric's lies below; hold otherwise.\n\n"
    "Exit code: 0 promote, 3 rollback, 4 hold, 2 bad input."
)


class CanaryFormat(StrEnum):
    """What `canary` prints on stdout."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def _rules(policy: Path, label: str | None) -> CanaryPolicy:
    try:
        rules = load_policy(policy).canary
    except PolicyError as exc:
        raise fail(str(exc)) from None
    if rules is None:
        typer.echo(
            f"quietwire: {policy} has no canary: section; judging latency only (+10%)",
            err=True,
        )
        rules = CanaryPolicy()
    if label is None:
        return rules
    try:
        return CanaryPolicy.model_validate({**rules.model_dump(), "cohort_label": label})
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise fail(f"--label {label!r}: {reason}") from None


def _effect_text(m: MetricEvidence, value: float | None) -> str:
    return effect_text(m.effect, value)


def _events_text(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _render_table(result: CanaryResult, console: Console) -> None:
    v = result.verdict
    title = (
        f"Canary {v.cohort_label}={v.canary} against {v.baseline}, "
        f"{v.level * 100:g}% intervals: {v.verdict.value.upper()}"
    )
    table = Table(title=title, title_justify="left")
    for col in ("route", "verdict", "metric", "effect", "interval", "threshold"):
        table.add_column(col, no_wrap=True)
    for col in ("canary n", "baseline n"):
        table.add_column(col, justify="right")
    table.add_column("status", no_wrap=True)
    table.add_column("why")
    for route in v.routes:
        for m in route.metrics:
            interval = (
                "—"
                if m.ci_low is None
                else f"[{_effect_text(m, m.ci_low)}, {_effect_text(m, m.ci_high)}]"
            )
            table.add_row(
                route.route,
                route.verdict.value,
                m.metric,
                _effect_text(m, m.estimate),
                interval,
                _effect_text(m, m.threshold),
                _events_text(m.canary.events),
                _events_text(m.baseline.events),
                m.status.value,
                m.reason,
            )
    console.print(table)
    console.print(f"verdict: {v.verdict.value} (exit {EXIT_CODES[v.verdict]})")


def canary(
    db: Annotated[Path, typer.Option("--db", help="Warehouse file (DuckDB) to read.")],
    policy: Annotated[
        Path,
        typer.Option(
            "--policy",
            help="Policy whose canary: section applies.",
            show_default="policies/default.yaml",
        ),
    ] = DEFAULT_POLICY_PATH,
    canary_cohort: Annotated[
        str | None,
        typer.Option("--canary", help="The canary cohort (default: the newest version found)."),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="The baseline cohort (default: the one before it)."),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option("--label", help="The label whose values are cohorts (default: policy's)."),
    ] = None,
    level: Annotated[
        float | None,
        typer.Option("--level", help="Two-sided interval level in (0, 1) (default: policy's)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", metavar="ISO", help="First window start to read.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", metavar="ISO", help="Last window end to read.")
    ] = None,
    output: Annotated[
        CanaryFormat,
        typer.Option(
            "--format",
            help="table; json: the verdict a rollout system reads (docs/analytics.md); "
            "csv: one row per route and metric.",
        ),
    ] = CanaryFormat.TABLE,
) -> None:
    """Promote, hold or rollback a canary (`CANARY_HELP`)."""
    start, end = parse_time("--since", since), parse_time("--until", until)
    check_range(start, end, "--since", "--until")
    rules = _rules(policy, label)
    try:
        conn = open_warehouse(db)
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    try:
        result = canary_verdict(
            conn,
            rules,
            canary=canary_cohort,
            baseline=baseline,
            level=level,
            since=start,
            until=end,
        )
    except AnalyticsError as exc:
        raise fail(str(exc)) from None
    finally:
        conn.close()
    if output is CanaryFormat.JSON:
        typer.echo(result.verdict.model_dump_json(indent=2))
    elif output is CanaryFormat.CSV:
        typer.echo(result.evidence.write_csv(), nl=False)
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
        _render_table(result, console)
    raise typer.Exit(code=EXIT_CODES[result.verdict.verdict])
