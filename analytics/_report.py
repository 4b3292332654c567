"""The fleet report: JSON records, a terminal table, a self-contained HTML page with plots.

Plots are drawn with matplotlib's object API (`Figure`, no pyplot global state, no GUI
backend) and embedded as inline SVG, so the HTML file needs no network to view.
"""

from __future__ import annotations

import html
import io
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from analytics._intervals import check_level
from analytics._totals import (
    cell_summary,
    fleet_mean,
    fleet_totals,
    grand_totals,
    mean_by_labels,
    signal_totals,
)

__all__ = [
    "FleetReport",
    "FleetTruth",
    "build_report",
    "render_fleet_table",
    "render_html",
    "render_json",
    "render_table",
]

_PRIMARY_LABEL = "route"


@dataclass(frozen=True, slots=True)
class SignalView:
    """Plot data for one signal: totals (or means) per window for each primary label."""

    signal: str
    kind: str  # counter | histogram
    label: str | None
    per_window: pl.DataFrame
    means: pl.DataFrame | None  # histogram: mean per (route, model) over the whole range


@dataclass(frozen=True, slots=True)
class FleetReport:
    """Everything a report shows, as Polars frames."""

    level: float
    generated_at: datetime
    source: str
    totals: pl.DataFrame
    summary: pl.DataFrame
    views: tuple[SignalView, ...]
    fleet: pl.DataFrame  # per signal and window: the fleet total (and mean) of all cells


def _labels_of(totals: pl.DataFrame, signal: str) -> list[str]:
    keys: set[str] = set()
    for attrs in totals.filter(pl.col("signal") == signal)["attributes"].unique().to_list():
        keys.update(json.loads(attrs))
    return sorted(keys)


def build_report(
    conn: duckdb.DuckDBPyConnection,
    *,
    level: float = 0.95,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str = "",
) -> FleetReport:
    """Run every query the report needs."""
    level = check_level(level)
    totals = fleet_totals(conn, level=level, signal=signal, since=since, until=until)
    summary = cell_summary(conn, level=level, signal=signal, since=since, until=until)
    views: list[SignalView] = []
    for name in sorted(totals["signal"].unique().to_list()):
        kinds = set(totals.filter(pl.col("signal") == name)["kind"].unique().to_list())
        labels = _labels_of(totals, name)
        label = _PRIMARY_LABEL if _PRIMARY_LABEL in labels else (labels[0] if labels else None)
        by = (label,) if label else ()
        if "counter" in kinds:
            per = signal_totals(conn, name, by=by, level=level, since=since, until=until)
            views.append(SignalView(name, "counter", label, per, None))
        elif "sum" in kinds:
            per = mean_by_labels(conn, name, by=by, level=level, since=since, until=until)
            means = mean_by_labels(
                conn, name, by=labels, per_window=False, level=level, since=since, until=until
            )
            views.append(SignalView(name, "histogram", label, per, means))
    fleet = _fleet(conn, totals, level=level, since=since, until=until)
    return FleetReport(level, datetime.now(UTC), source, totals, summary, tuple(views), fleet)


_FLEET_COLS = ["signal", "measure", "window_start", "window_end", "estimate", "ci_low", "ci_high"]


def _fleet(
    conn: duckdb.DuckDBPyConnection,
    totals: pl.DataFrame,
    *,
    level: float,
    since: datetime | None,
    until: datetime | None,
) -> pl.DataFrame:
    """Fleet totals per window from each signal's scalar totals: one noise draw per
    device instead of one per cell, so these are the figures a small fleet can read."""
    frames = []
    for name in sorted(totals.filter(pl.col("kind") == "total")["signal"].unique().to_list()):
        tot = grand_totals(conn, name, level=level, since=since, until=until)
        frames.append(tot.with_columns(signal=pl.lit(name), measure=pl.lit("total")))
        if totals.filter((pl.col("signal") == name) & (pl.col("kind") == "total_sum")).height:
            mean = fleet_mean(conn, name, level=level, since=since, until=until)
            mean = mean.rename({"mean": "estimate"})
            frames.append(mean.with_columns(signal=pl.lit(name), measure=pl.lit("mean")))
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


def render_json(report: FleetReport) -> str:
    """Every released cell (fleet_totals rows) as a JSON list of records."""
    records = [{k: _jsonable(v) for k, v in row.items()} for row in report.totals.to_dicts()]
    return json.dumps(records, indent=2)


def _cell_label(attributes: str) -> str:
    attrs = json.loads(attributes)
    return " ".join(f"{k}={v}" for k, v in sorted(attrs.items())) or "(all)"


def _fmt(value: float | None, measure: str) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if measure == "mean":
        return f"{value:.3g}"
    return f"{value:,.0f}"


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
    for col in ("signal", "measure", "window (UTC)", "estimate", f"{pct} interval"):
        table.add_column(col, no_wrap=True, justify="right" if col != "signal" else "left")
    if truth is not None:
        table.add_column("truth", justify="right")
    for row in report.fleet.to_dicts():
        m = row["measure"]
        cells = [
            row["signal"],
            m,
            f"{row['window_start']:%m-%d %H:%M}",
            _fmt(row["estimate"], m),
            f"[{_fmt(row['ci_low'], m)}, {_fmt(row['ci_high'], m)}]",
        ]
        if truth is not None:
            t = truth.get((row["signal"], m, row["window_start"]))
            lo, hi = row["ci_low"], row["ci_high"]
            if t is None:
                cells.append("—")
            elif lo is None or hi is None:
                cells.append(f"{_fmt(t, m)} (no interval)")
            else:
                mark = "[green]inside[/]" if lo <= t <= hi else "[red]outside[/]"
                cells.append(f"{_fmt(t, m)} {mark}")
        table.add_row(*cells)
    console.print(table)


def render_table(report: FleetReport, console: Console) -> None:
    """A compact per-cell summary over the whole range, one table per signal: counter
    totals, histogram event counts and means, each with its interval."""
    pct = f"{report.level * 100:g}%"
    if not report.summary.height:
        console.print("No released values in the selected range.")
        return
    console.print(f"[bold]Quietwire fleet summary[/bold] ({pct} confidence intervals)")
    for (name,), rows in report.summary.group_by("signal", maintain_order=True):
        table = Table(title=str(name), title_justify="left")
        table.add_column("cell", no_wrap=True)
        table.add_column("measure")
        table.add_column("estimate", justify="right", no_wrap=True)
        table.add_column(f"{pct} interval", justify="right", no_wrap=True)
        table.add_column("devices", justify="right")
        table.add_column("method")
        for row in rows.to_dicts():
            m = row["measure"]
            table.add_row(
                _cell_label(row["attributes"]),
                m,
                _fmt(row["estimate"], m),
                f"[{_fmt(row['ci_low'], m)}, {_fmt(row['ci_high'], m)}]",
                str(row["devices"]),
                row["interval"],
            )
        console.print(table)
    console.print("method: normal = normal approximation; bound = conservative bound (few devices)")


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _errorbars(
    ax: Any, x: list[Any], y: list[float], lo: list[Any], hi: list[Any], **kw: Any
) -> None:
    # A point without bounds (a mean whose count is not clearly above zero) is noise
    # alone: drawing it would invite reading it, so it is left out.
    keep = [i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if None not in (a, b)]
    xs = [x[i] for i in keep]
    ys = [y[i] for i in keep]
    below = [y[i] - lo[i] for i in keep]
    above = [hi[i] - y[i] for i in keep]
    ax.errorbar(xs, ys, yerr=[below, above], capsize=3, marker="o", markersize=3, **kw)


_NOT_ESTIMABLE = (
    "<p class='note'>{what}: no cell is estimable at this noise level (every count's "
    "interval includes zero). Per-cell breakdowns need a larger fleet or budget; the fleet "
    "totals above use one draw per device instead.</p>"
)


def _per_window_figure(view: SignalView, level: float) -> str:
    value = "estimate" if view.kind == "counter" else "mean"
    what = "total per window" if view.kind == "counter" else "mean per window"
    estimable = view.per_window.filter(
        pl.col("ci_low").is_not_null() & pl.col("ci_high").is_not_null()
    )
    if not estimable.height:
        return _NOT_ESTIMABLE.format(what=html.escape(f"{view.signal}: {what}"))
    fig = Figure(figsize=(8.0, 3.4))
    ax = fig.add_subplot()
    label = view.label
    groups = view.per_window[label].unique().sort().to_list() if label else [None]
    for i, g in enumerate(groups):
        part = view.per_window if label is None else view.per_window.filter(pl.col(label) == g)
        part = part.sort("window_start")
        # Dodge the groups sideways by a few percent of a window so error bars don't overlap.
        shift = (i - (len(groups) - 1) / 2) * 0.06
        xs = [
            start + (end - start) * shift
            for start, end in part.select("window_start", "window_end").iter_rows()
        ]
        _errorbars(
            ax,
            xs,
            part[value].to_list(),
            part["ci_low"].to_list(),
            part["ci_high"].to_list(),
            label=f"{view.label}={g}" if g is not None else view.signal,
        )
    # Span every window even when only a few points are estimable.
    first: Any = view.per_window["window_start"].min()
    last: Any = view.per_window["window_end"].max()
    ax.set_xlim(first, last)
    ax.set_title(f"{view.signal}: {what}, {level * 100:g}% intervals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    return _svg(fig)


_MAX_LINES = 6


def _range_totals_figure(report: FleetReport, signal: str) -> str:
    rows = report.summary.filter(
        (pl.col("signal") == signal) & (pl.col("measure") == "total")
    ).sort("estimate")
    names = [_cell_label(a) for a in rows["attributes"].to_list()]
    fig = Figure(figsize=(8.0, 0.3 * max(len(names), 3) + 1.0))
    ax = fig.add_subplot()
    y = list(range(len(names)))
    est = rows["estimate"].to_list()
    lo = [e - v for e, v in zip(est, rows["ci_low"].to_list(), strict=True)]
    hi = [v - e for e, v in zip(est, rows["ci_high"].to_list(), strict=True)]
    ax.errorbar(est, y, xerr=[lo, hi], fmt="o", capsize=3)
    ax.axvline(0.0, color="#999", linewidth=0.8)
    ax.set_yticks(y, names, fontsize="small")
    ax.set_title(f"{signal}: total over the range, {report.level * 100:g}% intervals")
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


def _fleet_figure(report: FleetReport) -> str:
    fleet = report.fleet
    panels = fleet.select("signal", "measure").unique(maintain_order=True).rows()
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(9.0, 2.6 * rows))
    for i, (name, measure) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        part = fleet.filter((pl.col("signal") == name) & (pl.col("measure") == measure))
        _errorbars(
            ax,
            part["window_start"].to_list(),
            part["estimate"].to_list(),
            part["ci_low"].to_list(),
            part["ci_high"].to_list(),
        )
        ax.set_title(f"{name}: {measure}", fontsize="small")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="x-small")
    fig.autofmt_xdate()
    fig.tight_layout()
    return _svg(fig)


def _means_figure(view: SignalView, level: float) -> str:
    assert view.means is not None
    means = view.means.filter(
        pl.col("mean").is_not_null()
        & pl.col("ci_low").is_not_null()
        & pl.col("ci_high").is_not_null()
    ).sort("mean")
    omitted = view.means.height - means.height
    if not means.height:
        return _NOT_ESTIMABLE.format(what=html.escape(f"{view.signal}: mean over the range"))
    labels = [c for c in means.columns if c not in _MEAN_COLS]
    names = [" ".join(f"{k}={r[k]}" for k in labels) or view.signal for r in means.to_dicts()]
    fig = Figure(figsize=(8.0, 0.35 * max(len(names), 3) + 1.0))
    ax = fig.add_subplot()
    y = list(range(len(names)))
    mean = means["mean"].to_list()
    lo = [
        m - v if v is not None else 0.0
        for m, v in zip(mean, means["ci_low"].to_list(), strict=True)
    ]
    hi = [
        v - m if v is not None else 0.0
        for m, v in zip(mean, means["ci_high"].to_list(), strict=True)
    ]
    ax.errorbar(mean, y, xerr=[lo, hi], fmt="o", capsize=3)
    ax.set_yticks(y, names, fontsize="small")
    title = f"{view.signal}: mean over the range, {level * 100:g}% intervals"
    if omitted:
        title += f"\n({omitted} cells not estimable: their count is not clearly above zero)"
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig)


_MEAN_COLS = {
    "mean",
    "std_error",
    "ci_low",
    "ci_high",
    "interval",
    "count_estimate",
    "sum_estimate",
    "devices",
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
th:nth-child(-n+3), td:nth-child(-n+3) { text-align: left; }
.note { color: #555; font-size: 0.9rem; } svg { max-width: 100%; height: auto; }
"""


def _summary_html(report: FleetReport) -> str:
    pct = f"{report.level * 100:g}%"
    head = "".join(
        f"<th>{h}</th>"
        for h in ("signal", "cell", "measure", "estimate", f"{pct} interval", "devices", "interval")
    )
    rows = []
    for r in report.summary.to_dicts():
        m = r["measure"]
        cells = (
            r["signal"],
            _cell_label(r["attributes"]),
            m,
            _fmt(r["estimate"], m),
            f"[{_fmt(r['ci_low'], m)}, {_fmt(r['ci_high'], m)}]",
            str(r["devices"]),
            r["interval"],
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(report: FleetReport, path: Path | str) -> Path:
    """Write the report as one self-contained HTML file (inline SVG plots); return its path."""
    out = Path(path)
    pct = f"{report.level * 100:g}%"
    totals = report.totals
    if totals.height:
        first: datetime = totals["window_start"].min()  # type: ignore[assignment]
        last: datetime = totals["window_end"].max()  # type: ignore[assignment]
        span = f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC"
        windows = totals["window_start"].n_unique()
    else:
        span, windows = "no data", 0
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Quietwire fleet report</title><style>{_CSS}</style></head><body>",
        "<h1>Quietwire fleet report</h1>",
        f"<p class='note'>Source {html.escape(report.source or '(connection)')} · "
        f"{html.escape(span)} · {windows} window(s) · generated "
        f"{report.generated_at:%Y-%m-%d %H:%M} UTC</p>",
        f"<p class='note'>Every figure is a sum of the devices' differentially private "
        f"releases. Error bars are {pct} confidence intervals for the fleet's true value, "
        "derived from each release's noise mechanism and scale (normal approximation when "
        "many devices contribute, a conservative bound when few do). Values are unbiased "
        "for the truth after each device's contribution bounds.</p>",
    ]
    if report.fleet.height:
        parts.append("<h2>Fleet totals per window</h2>")
        parts.append(
            "<p class='note'>From each device's one noisy total per signal and window: the "
            "tightest figures. Per-cell breakdowns below carry one noise draw per cell and "
            "device, and need far larger fleets to read.</p>"
        )
        parts.append(_fleet_figure(report))
    for view in report.views:
        parts.append(f"<h2>{html.escape(view.signal)}</h2>")
        groups = view.per_window[view.label].n_unique() if view.label else 1
        if groups > _MAX_LINES:
            # Too many lines to read per window: the cells' totals over the range instead.
            parts.append(_range_totals_figure(report, view.signal))
        else:
            parts.append(_per_window_figure(view, report.level))
        if view.means is not None and view.means.height:
            parts.append(_means_figure(view, report.level))
    parts.append("<h2>Summary over the range</h2>")
    parts.append(_summary_html(report))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
