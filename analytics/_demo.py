"""`quietwire demo`: a simulated fleet through client, ingest, sink and DuckDB, then the report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from analytics._pipeline import FleetRun, run_fleet
from analytics._reader import open_warehouse
from analytics._report import (
    FleetTruth,
    build_report,
    render_fleet_table,
    render_html,
    render_table,
)
from analytics._simulation import FleetSpec
from analytics._totals import fleet_totals
from policies import PILOT_POLICY_PATH, Policy, load_policy

__all__ = ["coverage", "fleet_truth", "run_demo"]


def fleet_truth(run: FleetRun) -> FleetTruth:
    """(signal, total | mean, window_start) -> the simulator's clamped truth."""
    out: FleetTruth = {}
    for (signal, start, _attrs, kind, _bucket), value in run.truth.items():
        if kind == "total":
            out[(signal, "total", start)] = value
    for (signal, start, _attrs, kind, _bucket), value in run.truth.items():
        count = out.get((signal, "total", start))
        if kind == "total_sum" and count:
            out[(signal, "mean", start)] = value / count
    return out


def coverage(run: FleetRun, totals: pl.DataFrame) -> tuple[int, int]:
    """(cells whose true total lies in its interval, cells compared)."""
    inside = compared = 0
    for row in totals.iter_rows(named=True):
        key = (
            row["signal"],
            row["window_start"],
            row["attributes"],
            row["kind"],
            row["bucket_index"],
        )
        truth = run.truth.get(key)
        if truth is None:
            continue
        compared += 1
        inside += int(row["ci_low"] <= truth <= row["ci_high"])
    return inside, compared


def run_demo(
    *,
    devices: int,
    windows: int,
    db: Path,
    kafka: str | None,
    html: Path,
    seed: int | None,
    policy: Path = PILOT_POLICY_PATH,
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
    conn = open_warehouse(db)
    try:
        report = build_report(conn, source=str(db))
        inside, compared = coverage(run, fleet_totals(conn))
    finally:
        conn.close()
    render_fleet_table(report, console, fleet_truth(run))
    render_table(report, console)
    if compared:
        console.print(
            f"Simulator truth inside the 95% interval: {inside} of {compared} released cells "
            f"({inside / compared:.1%}); expected about 95%."
        )
    written = render_html(report, html)
    console.print(f"HTML report: {written}")
    return run


def _explain_budget(console: Console, rules: Policy, path: Path, devices: int) -> None:
    # Local DP: every device adds its own noise, so a fleet total's error grows as
    # sqrt(devices) while the total grows as devices. Say what that means for this run.
    per_window = sum(s.epsilon for s in rules.signals.values())
    console.print(
        f"Policy {path.name}: epsilon {per_window:g} per device per window over "
        f"{len(rules.signals)} signals, daily cap {rules.privacy.daily_epsilon:g}."
    )
    if path == PILOT_POLICY_PATH:
        console.print(
            "[yellow]This is the pilot budget (8x the default), for small opted-in fleets: "
            f"under default.yaml, {devices} devices would see almost only noise, because "
            "a local-DP total's relative error falls only as 1/sqrt(devices).[/] "
            "Try --policy with policies/default.yaml to see it."
        )
