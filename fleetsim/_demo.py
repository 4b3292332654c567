"""`quietwire demo`: a simulated fleet through client, ingest, sink and DuckDB, then the report."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from analytics import (
    FleetReport,
    FleetTruth,
    build_report,
    fleet_totals,
    open_warehouse,
    render_fleet_table,
    render_html,
    render_table,
)
from auditlog import AuditLog
from fleetsim._pipeline import FleetRun, TruthKey, run_fleet
from fleetsim._simulation import MODEL_CANARY, MODEL_STABLE, FleetSpec
from policies import DEFAULT_POLICY_PATH, PILOT_POLICY_PATH, Policy, load_policy

__all__ = [
    "canary_verdict",
    "cell_means_truth",
    "coverage",
    "fleet_truth",
    "fleet_truth_of",
    "report_run",
    "run_demo",
]

_LATENCY = "gen_ai.client.operation.duration"


def fleet_truth(run: FleetRun) -> FleetTruth:
    """(signal, total | mean, window_start) -> the simulator's clamped truth."""
    return fleet_truth_of(run.truth)


def fleet_truth_of(truth: Mapping[TruthKey, float]) -> FleetTruth:
    """The fleet totals and means behind `truth` (keyed as `FleetRun.truth`).

    A signal's total is its scalar `total` (and `total_sum`), under either model; under
    the aggregate model a signal without total tasks has its cells added: counter cells,
    or a histogram's per-cell `count` and `sum`. The report's fleet rows follow the same
    rule, so each truth here is the quantity its interval is for.
    """
    scalar: dict[tuple[str, str, datetime], float] = {}
    cells: dict[tuple[str, str, datetime], float] = {}
    for (signal, start, _attrs, kind, _bucket), value in truth.items():
        if kind in ("total", "total_sum"):
            k = (signal, kind, start)
            scalar[k] = scalar.get(k, 0.0) + value
        elif kind in ("counter", "count", "sum"):
            k = (signal, kind, start)
            cells[k] = cells.get(k, 0.0) + value
    out: FleetTruth = {}
    for (signal, kind, start), value in scalar.items():
        if kind == "total":
            out[(signal, "total", start)] = value
            total_sum = scalar.get((signal, "total_sum", start))
            if total_sum is not None and value:
                out[(signal, "mean", start)] = total_sum / value
    for (signal, kind, start), value in cells.items():
        if (signal, "total", start) in out or kind == "sum":
            continue
        out[(signal, "total", start)] = value
        cell_sum = cells.get((signal, "sum", start))
        if kind == "count" and cell_sum is not None and value:
            out[(signal, "mean", start)] = cell_sum / value
    return out


def _canonical(attributes: str) -> str:
    return json.dumps(json.loads(attributes), sort_keys=True, separators=(",", ":"))


def coverage(run: FleetRun, totals: pl.DataFrame) -> tuple[int, int]:
    """(cells whose true total lies in its interval, cells compared).

    `totals` is `fleet_totals`: every released cell per window, local releases summed
    over devices and secure aggregates summed over regions, compared with the
    simulator's clamped truth of the same (signal, window, cell, kind, bucket).
    """
    inside = compared = 0
    for row in totals.iter_rows(named=True):
        key = (
            row["signal"],
            row["window_start"],
            _canonical(row["attributes"]),
            row["kind"],
            row["bucket_index"],
        )
        truth = run.truth.get(key)
        if truth is None:
            continue
        compared += 1
        inside += int(row["ci_low"] <= truth <= row["ci_high"])
    return inside, compared


def cell_means_truth(
    truth: Mapping[TruthKey, float], signal: str, labels: tuple[str, ...]
) -> dict[tuple[str, ...], float]:
    """A histogram's true mean per value of `labels` over every window: sum / events.

    Events are a cell's `count` (aggregate model) or its buckets added (local model).
    """
    sums: dict[tuple[str, ...], float] = {}
    counts: dict[tuple[str, ...], float] = {}
    has_count = {
        (start, attrs) for (s, start, attrs, kind, _b) in truth if s == signal and kind == "count"
    }
    for (s, start, attrs, kind, _bucket), value in truth.items():
        if s != signal:
            continue
        values = json.loads(attrs)
        group = tuple(str(values.get(label, "")) for label in labels)
        if kind == "sum":
            sums[group] = sums.get(group, 0.0) + value
        elif kind == "count" or (kind == "bucket" and (start, attrs) not in has_count):
            counts[group] = counts.get(group, 0.0) + value
    return {g: sums[g] / n for g, n in counts.items() if n and g in sums}


def canary_verdict(
    means: pl.DataFrame,
    *,
    route: str = "local",
    stable: str = MODEL_STABLE,
    canary: str = MODEL_CANARY,
) -> str:
    """Whether the canary's mean on `route` is above the stable model's, outside both
    intervals (`means`: `mean_by_labels` over route and model)."""

    def interval(model: str) -> tuple[float, float] | None:
        hit = means.filter((pl.col("route") == route) & (pl.col("model") == model))
        if not hit.height:
            return None
        lo, hi = hit["ci_low"][0], hit["ci_high"][0]
        return (math.nan, math.nan) if lo is None or hi is None else (float(lo), float(hi))

    new, old = interval(canary), interval(stable)
    if new is None or old is None:
        return f"the {route} route has no mean for {canary} or {stable}"
    if math.isnan(new[0]) or math.isnan(old[0]):
        return f"not estimable on the {route} route: a count's interval includes zero"
    if new[0] > old[1]:
        return f"{canary} is slower on the {route} route, outside the intervals"
    if new[1] < old[0]:
        return f"{canary} is faster on the {route} route, outside the intervals"
    return f"{canary} and {stable} are not distinguishable on the {route} route (intervals overlap)"


def _render_means(report: FleetReport, truth: Mapping[TruthKey, float], console: Console) -> None:
    """Mean latency per (model x route) with its interval and the simulator's truth."""
    view = next((v for v in report.views if v.signal == _LATENCY), None)
    if view is None or not {"route", "model"} <= set(view.cells.columns):
        return
    pct = f"{report.level * 100:g}%"
    true_means = cell_means_truth(truth, _LATENCY, ("model", "route"))
    table = Table(title=f"Mean latency per (model x route), {pct} intervals", title_justify="left")
    for col in ("model", "route", "mean (s)", f"{pct} interval", "devices", "method", "truth"):
        table.add_column(col, justify="left" if col in ("model", "route") else "right")
    inside = compared = 0
    rows = view.cells.filter(pl.col("model") != "other", pl.col("route") != "other")
    for r in rows.sort("model", "route").to_dicts():
        t = true_means.get((r["model"], r["route"]))
        lo, hi = r["ci_low"], r["ci_high"]
        bounded = lo is not None and hi is not None
        mark = ""
        if t is not None and bounded:
            compared += 1
            inside += int(lo <= t <= hi)
            mark = " [green]inside[/]" if lo <= t <= hi else " [red]outside[/]"
        table.add_row(
            r["model"],
            r["route"],
            "—" if math.isnan(r["mean"]) else f"{r['mean']:.3f}",
            f"[{lo:.3f}, {hi:.3f}]" if bounded else "not estimable",
            f"{r['devices']:,}",
            r["interval"],
            "—" if t is None else f"{t:.3f}{mark}",
        )
    console.print(table)
    if compared:
        console.print(f"Truth inside the mean's interval: {inside} of {compared} cells.")
    console.print(f"Canary check: {canary_verdict(view.cells)}.")


def run_demo(
    *,
    devices: int,
    windows: int,
    db: Path,
    kafka: str | None,
    html: Path,
    seed: int | None,
    policy: Path = DEFAULT_POLICY_PATH,
    console: Console | None = None,
) -> FleetRun:
    """Simulate `devices` devices for `windows` windows into `db`, then write the report.

    With `kafka` (a bootstrap address) envelopes travel through Kafka and the sink's
    consumer group; without it the ingest hands them to the sink in-process.
    """
    if console is None:
        # Piped (CI, `make demo | tee`): rich would assume 80 columns and cut the tables.
        console = Console()
        if not console.is_terminal:
            console = Console(width=140)
    # aiokafka logs transient, retried broker states (coordinator not yet elected) as
    # errors; the demo reports what matters itself.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    spec = FleetSpec(devices=devices, windows=windows, seed=7 if seed is None else seed)
    rules = load_policy(policy)
    via = f"Kafka at {kafka}" if kafka else "the embedded in-process sink"
    console.print(
        f"[bold]Quietwire demo[/]: {devices} devices x {windows} windows, "
        f"client -> HTTP ingest -> {via} -> {db}"
    )
    _explain_budget(console, rules, policy, devices)
    started = time.monotonic()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("device windows", total=devices * windows)
        run = run_fleet(
            spec,
            db,
            kafka=kafka,
            policy=rules,
            progress=lambda done, _total: bar.update(task, completed=done),
        )
    elapsed = time.monotonic() - started
    console.print(
        f"{run.envelopes_sent} envelopes sent, {run.envelopes_stored} stored in {db} "
        f"({elapsed:.1f} s)" + (f"; client drops: {run.dropped}" if run.dropped else "")
    )
    stats = run.aggregation
    if stats is not None:
        console.print(
            f"Secure aggregation: {stats.reports_aggregated} reports verified with the helper, "
            f"{stats.batches_collected} batches revealed"
            + (
                f", {stats.batches_below_minimum} below the minimum of "
                f"{rules.aggregation.min_batch_size} devices and never revealed"
                if stats.batches_below_minimum
                else ""
            )
            + (f"; refused: {dict(stats.reports_rejected)}" if stats.reports_rejected else "")
            + "."
        )
    report_run(run, html, console)
    return run


def report_run(run: FleetRun, html: Path, console: Console) -> FleetReport:
    """The demo's report of a finished run: fleet totals against the simulator's truth,
    the per-cell summary, mean latency per (model x route) with its truth and the
    canary check, the coverage of every released cell per privacy model, the HTML."""
    conn = open_warehouse(run.db)
    audit = AuditLog(run.audit_log, read_only=True) if run.audit_log is not None else None
    try:
        report = build_report(conn, source=str(run.db), policy=run.policy, audit=audit)
        totals = fleet_totals(conn)
    finally:
        conn.close()
        if audit is not None:
            audit.close()
    render_fleet_table(report, console, fleet_truth(run))
    render_table(report, console)
    _render_means(report, run.truth, console)
    for model in ("aggregate", "local"):
        inside, compared = coverage(run, totals.filter(pl.col("privacy_model") == model))
        if compared:
            how = "exact noise quantiles" if model == "aggregate" else "normal or bound"
            console.print(
                f"Simulator truth inside the 95% interval: {inside} of {compared} released "
                f"{model}-model cells ({inside / compared:.1%}; {how}); expected about 95%."
            )
    _render_insights(report, console)
    written = render_html(report, html)
    console.print(f"HTML report: {written}")
    return report


def _render_insights(report: FleetReport, console: Console) -> None:
    """One line each: the canary's verdict per route, drift per route, what the HTML has."""
    insights = report.insights
    if insights is None:
        return
    if insights.canary is not None:
        v = insights.canary.verdict
        routes = ", ".join(f"{r.route}: {r.verdict.value}" for r in v.routes)
        console.print(
            f"Canary verdict (analytics, {v.level * 100:g}% intervals): [bold]{v.verdict.value}"
            f"[/bold] for {v.canary} against {v.baseline} ({routes})."
        )
    for result in insights.drift:
        p = "" if result.p_value is None else f", p = {result.p_value:.3g}"
        console.print(f"Drift of {result.signal}, {result.b}: {result.verdict}{p}.")
    for note in insights.notes:
        console.print(f"[dim]{note}[/dim]")


def _explain_budget(console: Console, rules: Policy, path: Path, devices: int) -> None:
    per_window = sum(s.epsilon for s in rules.signals.values())
    console.print(
        f"Policy {path.name}: epsilon {per_window:g} per device per window over "
        f"{len(rules.signals)} signals, daily cap {rules.privacy.daily_epsilon:g}."
    )
    aggregate = [s for s in rules.signals.values() if s.privacy_model == "aggregate"]
    local = [s for s in rules.signals.values() if s.privacy_model == "local"]
    if aggregate:
        console.print(
            f"{len(aggregate)} signal(s) under the aggregate model: two aggregators sum the "
            "devices' secret shares and each adds noise once per figure, so a figure's "
            "error does not grow with the fleet (batches of at least "
            f"{rules.aggregation.min_batch_size} devices)."
        )
    if local:
        # Local DP: every device adds its own noise, so a total's error grows as
        # sqrt(devices) while the total grows as devices.
        console.print(
            f"{len(local)} signal(s) under the local model: each device adds its own "
            "noise, so a total's relative error falls only as 1/sqrt(devices)."
        )
    if path == PILOT_POLICY_PATH and local and not aggregate:
        ratio = rules.privacy.daily_epsilon / load_policy().privacy.daily_epsilon
        console.print(
            f"[yellow]This is the pilot budget ({ratio:g}x the default), every signal "
            f"under the local model, for small opted-in fleets: {devices} devices need it "
            "to see more than noise.[/] policies/default.yaml uses secure aggregation for "
            "the health and performance tiers (the demo's default)."
        )
