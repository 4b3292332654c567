"""The fleet report: what it shows (`build_report`), as JSON records or terminal tables.

Fleet totals come first (the figures a small fleet can read), then per signal: means
(histograms) or totals (counters) per label set with their intervals, histograms per
cell from the buckets, and where every figure came from (privacy model, mechanism,
noise draws, devices or reports per batch). The HTML page is `analytics._html`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import polars as pl
from rich.console import Console
from rich.table import Table

from analytics._basis import FleetBasis, fleet_basis
from analytics._cube import local_cube
from analytics._insights import ReportInsights, build_insights
from analytics._intervals import check_level
from analytics._means import (
    cell_summary_of,
    plan_cell_summary,
    plan_fleet_mean,
    plan_mean_by_labels,
)
from analytics._plots import cell_label
from analytics._sources import Planned, figure_sources, has_aggregates, run_planned
from analytics._totals import (
    RESULT_COLUMNS,
    plan_fleet_totals,
    plan_grand_totals,
    plan_histogram_buckets,
    plan_signal_totals,
)
from auditlog import AuditLog
from policies import Policy

__all__ = [
    "PRIMARY_LABEL",
    "SERIES_LABEL",
    "FleetReport",
    "FleetTruth",
    "SignalView",
    "build_report",
    "describe_origin",
    "format_count",
    "format_figure",
    "format_interval",
    "render_basis",
    "render_fleet_table",
    "render_json",
    "render_table",
]

PRIMARY_LABEL = "route"
SERIES_LABEL = "model"


@dataclass(frozen=True, slots=True)
class SignalView:
    """Plot data for one signal."""

    signal: str
    kind: str  # counter | histogram
    unit: str
    label: str | None  # the primary label (route) per-window lines are drawn for
    labels: tuple[str, ...]  # every label of its cells
    windows: int
    per_window: pl.DataFrame  # totals (counter) or means (histogram) per window and label
    cells: pl.DataFrame  # the same per cell (all labels) over the whole range
    buckets: pl.DataFrame | None  # histogram: events per bucket and cell over the range
    origin: str  # which privacy model and mechanism produced its figures, in words


@dataclass(frozen=True, slots=True)
class _ViewShape:
    """A `SignalView` before its frames: which plans it asked (two, three with buckets)."""

    signal: str
    kind: str
    label: str | None
    labels: tuple[str, ...]
    windows: int
    origin: str
    buckets: bool = False


@dataclass(frozen=True, slots=True)
class FleetReport:
    """Everything a report shows, as Polars frames."""

    level: float
    generated_at: datetime
    source: str
    totals: pl.DataFrame  # fleet_totals: every released cell per window
    summary: pl.DataFrame  # cell_summary over the range
    views: tuple[SignalView, ...]
    fleet: pl.DataFrame  # per signal and window: the fleet total (and mean) of all cells
    sources: pl.DataFrame  # figure_sources: model, mechanism, draws, reports per signal
    basis: FleetBasis  # devices by key anchoring, releases withheld, what intervals cover
    insights: ReportInsights | None = None  # drift, canary, cost, audit (with a policy)


def _labels_of(totals: pl.DataFrame, signal: str) -> list[str]:
    keys: set[str] = set()
    for attrs in totals.filter(pl.col("signal") == signal)["attributes"].unique().to_list():
        keys.update(json.loads(attrs))
    # A label named like a result column cannot be grouped by (it would be overwritten).
    return sorted(k for k in keys if k not in RESULT_COLUMNS)


def format_count(n: Any) -> str:
    return f"{int(n):,}" if n is not None else "?"


def describe_origin(sources: pl.DataFrame, signal: str) -> str:
    """One line per privacy model of `signal`: mechanism, draws, devices or reports."""
    parts = []
    rows = sources.filter(pl.col("signal") == signal)
    for (model,), part in rows.group_by("privacy_model", maintain_order=True):
        mechs = sorted({m for ms in part["mechanism"].to_list() for m in ms.split("+")})
        mech = " + ".join(m.replace("_", " ") for m in mechs)
        eps = part["epsilon"].drop_nulls()
        eps_txt = ""
        if eps.len():
            lo, hi = float(eps.min()), float(eps.max())  # type: ignore[arg-type]
            eps_txt = f", ε {lo:.3g} per release" if lo == hi else f", ε {lo:.3g}-{hi:.3g}"
        if model == "aggregate":
            draws = int(part["draws"].max())  # type: ignore[arg-type]
            r_lo, r_hi = part["reports_min"].min(), part["reports_max"].max()
            reports = (
                format_count(r_lo) if r_lo == r_hi else f"{format_count(r_lo)}-{format_count(r_hi)}"
            )
            parts.append(
                f"aggregate model (Prio3 secure aggregation, central DP): {mech}, "
                f"{draws} draws per figure (one per aggregator){eps_txt}; "
                f"{reports} reports (devices) per batch"
            )
        else:
            devices = part["devices"].max()
            parts.append(
                f"local model (each device adds its own noise): {mech}, one draw per "
                f"device and figure{eps_txt}; {format_count(devices)} devices"
            )
    return "; ".join(parts) or "no released figures"


def build_report(
    conn: duckdb.DuckDBPyConnection,
    *,
    level: float = 0.95,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str = "",
    policy: Policy | None = None,
    audit: AuditLog | None = None,
) -> FleetReport:
    """Run every query the report needs (over one pre-added copy of the local rows).

    With `policy`, the report also answers drift, the canary's verdict, cost and the
    auditor's questions under its rules (`analytics._insights`), verifying `audit` (the
    ingest's audit log) when given.
    """
    level = check_level(level)
    with local_cube(conn):
        report = _build_report(conn, level, signal, since, until, source)
        if policy is None:
            return report
        insights = build_insights(
            conn, policy, audit=audit, level=level, since=since, until=until, source=source
        )
        return dataclasses.replace(report, insights=insights)


def _build_report(
    conn: duckdb.DuckDBPyConnection,
    level: float,
    signal: str | None,
    since: datetime | None,
    until: datetime | None,
    source: str,
) -> FleetReport:
    q: dict[str, Any] = {"level": level, "since": since, "until": until}
    # Questions are asked together (`run_planned`): a statement over the cube costs 10
    # to 20 ms however few rows it adds, and a report asks a dozen or more of them. The
    # totals and the summary first, then every signal's views and the fleet figures,
    # which depend on what the totals hold.
    totals, *summary_parts = run_planned(
        conn, [plan_fleet_totals(signal=signal, **q), *plan_cell_summary(signal=signal, **q)]
    )
    summary = cell_summary_of(summary_parts)
    sources = figure_sources(conn, signal=signal, since=since, until=until)
    plans: list[Planned] = []
    shapes: list[_ViewShape] = []
    for name in sorted(totals["signal"].unique().to_list()):
        rows = totals.filter(pl.col("signal") == name)
        kinds = set(rows["kind"].unique().to_list())
        labels = _labels_of(totals, name)
        label = PRIMARY_LABEL if PRIMARY_LABEL in labels else (labels[0] if labels else None)
        by = (label,) if label else ()
        windows = rows["window_start"].n_unique()
        origin = describe_origin(sources, name)
        if "counter" in kinds:
            plans += [
                plan_signal_totals(name, by=by, **q),
                plan_signal_totals(name, by=labels, per_window=False, **q),
            ]
            shapes.append(_ViewShape(name, "counter", label, tuple(labels), windows, origin))
        elif "sum" in kinds:
            buckets = "bucket" in kinds
            plans += [
                plan_mean_by_labels(name, by=by, **q),
                plan_mean_by_labels(name, by=labels, per_window=False, **q),
            ]
            if buckets:
                plans.append(plan_histogram_buckets(name, by=labels, **q))
            shapes.append(
                _ViewShape(name, "histogram", label, tuple(labels), windows, origin, buckets)
            )
    fleet_plans, fleet_parts = _fleet_plans(totals, level=level, since=since, until=until)
    answers = iter(run_planned(conn, [*plans, *fleet_plans]))
    views: list[SignalView] = []
    for v in shapes:
        per, cells = next(answers), next(answers)
        hist = next(answers) if v.buckets else None
        unit = _unit(conn, v.signal) if v.kind == "histogram" else ""
        views.append(
            SignalView(
                v.signal, v.kind, unit, v.label, v.labels, v.windows, per, cells, hist, v.origin
            )
        )
    fleet = _fleet_frame(fleet_parts, list(answers))
    basis = fleet_basis(conn, signal=signal, since=since, until=until)
    return FleetReport(
        level, datetime.now(UTC), source, totals, summary, tuple(views), fleet, sources, basis
    )


def _unit(conn: duckdb.DuckDBPyConnection, signal: str) -> str:
    rows = conn.execute(
        "SELECT unit FROM released_values WHERE signal = ? AND kind = 'sum' LIMIT 1", [signal]
    ).fetchall()
    if not rows and has_aggregates(conn):
        rows = conn.execute(
            "SELECT unit FROM fleet_aggregates WHERE signal = ? AND kind = 'sum' LIMIT 1",
            [signal],
        ).fetchall()
    return str(rows[0][0]) if rows else ""


_FLEET_COLS = [
    "signal",
    "measure",
    "window_start",
    "window_end",
    "estimate",
    "ci_low",
    "ci_high",
    "interval",
    "devices",
    "privacy_model",
]


def _fleet_plans(
    totals: pl.DataFrame,
    *,
    level: float,
    since: datetime | None,
    until: datetime | None,
) -> tuple[list[Planned], list[tuple[str, str]]]:
    """The plans of the fleet totals per window, and the (signal, measure) each answers:
    from each signal's scalar totals (under the local model one noise draw per device
    instead of one per cell; under the aggregate model its total tasks, two central
    draws whatever the fleet's size), from its cells added under the aggregate model
    where it has no total task; and its fleet mean where it has sums."""
    has_total = (pl.col("kind") == "total") | (
        (pl.col("privacy_model") == "aggregate") & pl.col("kind").is_in(["counter", "count"])
    )
    has_sum = pl.col("kind").is_in(["total_sum"]) | (
        (pl.col("privacy_model") == "aggregate") & (pl.col("kind") == "sum")
    )
    plans: list[Planned] = []
    parts: list[tuple[str, str]] = []
    for name in sorted(totals.filter(has_total)["signal"].unique().to_list()):
        plans.append(plan_grand_totals(name, level=level, since=since, until=until))
        parts.append((name, "total"))
        if totals.filter((pl.col("signal") == name) & has_sum).height:
            plans.append(plan_fleet_mean(name, level=level, since=since, until=until))
            parts.append((name, "mean"))
    return plans, parts


def _fleet_frame(parts: list[tuple[str, str]], answers: list[pl.DataFrame]) -> pl.DataFrame:
    """The fleet figures of `_fleet_plans`' answers, one frame."""
    frames = []
    for (name, measure), frame in zip(parts, answers, strict=True):
        if measure == "mean":
            frame = frame.rename({"mean": "estimate"})
        frames.append(frame.with_columns(signal=pl.lit(name), measure=pl.lit(measure)))
    if not frames:
        return pl.DataFrame(schema={c: pl.Utf8 for c in _FLEET_COLS})
    return pl.concat([f.select(_FLEET_COLS) for f in frames], how="vertical_relaxed").sort(
        "signal", "measure", "window_start"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in frame.to_dicts()]


def render_json(report: FleetReport) -> str:
    """The report as one JSON object: `cells` (every released cell per window, the
    fleet_totals rows), `fleet` (each signal's total and mean per window), `basis`
    (devices by key anchoring per window, releases withheld per signal, what the
    intervals cover), the confidence level and where the figures come from."""
    doc = {
        "level": report.level,
        "generated_at": report.generated_at.isoformat(),
        "source": report.source,
        "coverage": report.basis.statement,
        "cells": _records(report.totals),
        "fleet": _records(report.fleet),
        "basis": {
            "devices": _records(report.basis.devices),
            "suppressed": _records(report.basis.suppressed),
            "suppressed_total": report.basis.suppressed_total,
        },
        "sources": _records(report.sources),
    }
    return json.dumps(doc, indent=2)


def format_figure(value: float | None, measure: str, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if measure == "mean":
        return f"{value:.{digits}g}"
    return f"{value:,.0f}"


def format_interval(
    est: float | None, lo: float | None, hi: float | None, measure: str
) -> list[str]:
    """[estimate, '[low, high]'] with enough digits to tell the bounds apart."""
    digits = 3
    if measure == "mean" and est is not None and lo is not None and hi is not None:
        width, size = hi - lo, max(abs(est), abs(lo), abs(hi))
        if width > 0.0 and math.isfinite(size):
            digits = min(8, max(3, math.ceil(math.log10(size / width)) + 2))
    return [
        format_figure(est, measure, digits),
        f"[{format_figure(lo, measure, digits)}, {format_figure(hi, measure, digits)}]",
    ]


FleetTruth = dict[tuple[str, str, datetime], float]


def render_fleet_table(
    report: FleetReport, console: Console, truth: FleetTruth | None = None
) -> None:
    """Fleet totals (and means) per signal and window; with `truth` (a simulation's
    (signal, measure, window_start) -> true value) a column says whether each interval
    holds it."""
    if not report.fleet.height:
        return
    pct = f"{report.level * 100:g}%"
    table = Table(title=f"Fleet totals per window ({pct} intervals)", title_justify="left")
    for col in ("signal", "measure", "window (UTC)", "estimate", f"{pct} interval", "devices"):
        table.add_column(col, no_wrap=True, justify="left" if col == "signal" else "right")
    table.add_column("model")
    if truth is not None:
        table.add_column("truth", justify="right")
    for row in report.fleet.to_dicts():
        m = row["measure"]
        cells = [
            row["signal"],
            m,
            f"{row['window_start']:%m-%d %H:%M}",
            *format_interval(row["estimate"], row["ci_low"], row["ci_high"], m),
            format_count(row["devices"]),
            row["privacy_model"],
        ]
        if truth is not None:
            t = truth.get((row["signal"], m, row["window_start"]))
            lo, hi = row["ci_low"], row["ci_high"]
            if t is None:
                cells.append("—")
            elif lo is None or hi is None:
                cells.append(f"{format_figure(t, m)} (no interval)")
            else:
                mark = "[green]inside[/]" if lo <= t <= hi else "[red]outside[/]"
                cells.append(f"{format_interval(t, lo, hi, m)[0]} {mark}")
        table.add_row(*cells)
    console.print(table)


_METHODS = (
    "method: normal = normal approximation (many draws); exact = the noise's own law "
    "(secure aggregates); bound = conservative bound (few devices)"
)


def render_table(report: FleetReport, console: Console) -> None:
    """A compact per-cell summary over the whole range, one table per signal: counter
    totals, histogram event counts and means, each with its interval; each table's
    caption says which privacy model and mechanism produced it."""
    pct = f"{report.level * 100:g}%"
    if not report.summary.height:
        console.print("No released values in the selected range.")
        return
    console.print(f"[bold]Quietwire fleet summary[/bold] ({pct} confidence intervals)")
    for (name,), rows in report.summary.group_by("signal", maintain_order=True):
        table = Table(
            title=str(name),
            title_justify="left",
            caption=describe_origin(report.sources, str(name)),
            caption_justify="left",
        )
        table.add_column("cell", no_wrap=True)
        table.add_column("measure")
        table.add_column("estimate", justify="right", no_wrap=True)
        table.add_column(f"{pct} interval", justify="right", no_wrap=True)
        table.add_column("devices", justify="right")
        table.add_column("method")
        for row in rows.to_dicts():
            m = row["measure"]
            table.add_row(
                cell_label(row["attributes"]),
                m,
                *format_interval(row["estimate"], row["ci_low"], row["ci_high"], m),
                format_count(row["devices"]),
                row["interval"],
            )
        console.print(table)
    console.print(_METHODS)
    render_basis(report, console)


def render_basis(report: FleetReport, console: Console) -> None:
    """Which devices the figures rest on, how their keys are anchored, what they withheld."""
    basis = report.basis
    if basis.devices.height:
        table = Table(title="Devices per window", title_justify="left")
        for col in ("window (UTC)", "devices", "attested (TPM)", "software key"):
            table.add_column(col, justify="right")
        for row in basis.devices.to_dicts():
            table.add_row(
                f"{row['window_start']:%Y-%m-%d %H:%M}",
                format_count(row["devices"]),
                format_count(row["attested"]),
                format_count(row["software"]),
            )
        console.print(table)
    if basis.suppressed.height:
        table = Table(
            title="Releases withheld (privacy budget spent; not in any total)",
            title_justify="left",
        )
        for col in ("signal", "releases", "devices", "windows"):
            table.add_column(col, justify="left" if col == "signal" else "right")
        for row in basis.suppressed.to_dicts():
            table.add_row(
                row["signal"],
                format_count(row["releases"]),
                format_count(row["devices"]),
                format_count(row["windows"]),
            )
        console.print(table)
    else:
        console.print("Releases withheld (privacy budget spent): none.")
    console.print(basis.statement)
