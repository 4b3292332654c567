"""The fleet report: JSON records, a terminal table, a self-contained HTML page with plots.

Fleet totals come first (the figures a small fleet can read), then per signal: means
(histograms) or totals (counters) per label set with their intervals, histograms per
cell from the buckets, and where every figure came from (privacy model, mechanism,
noise draws, devices or reports per batch). Plots (`analytics._plots`) are inline SVG,
so the HTML file needs no network to view.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from rich.console import Console
from rich.table import Table

from analytics._intervals import check_level
from analytics._plots import (
    buckets_figure,
    cell_label,
    cells_figure,
    fleet_figure,
    grouped_figure,
    window_figure,
)
from analytics._sources import figure_sources, has_aggregates
from analytics._totals import (
    RESULT_COLUMNS,
    cell_summary,
    fleet_mean,
    fleet_totals,
    grand_totals,
    histogram_buckets,
    mean_by_labels,
    signal_totals,
)

__all__ = [
    "FleetReport",
    "FleetTruth",
    "SignalView",
    "build_report",
    "render_fleet_table",
    "render_html",
    "render_json",
    "render_table",
]

_PRIMARY_LABEL = "route"
_SERIES_LABEL = "model"


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


def _labels_of(totals: pl.DataFrame, signal: str) -> list[str]:
    keys: set[str] = set()
    for attrs in totals.filter(pl.col("signal") == signal)["attributes"].unique().to_list():
        keys.update(json.loads(attrs))
    # A label named like a result column cannot be grouped by (it would be overwritten).
    return sorted(k for k in keys if k not in RESULT_COLUMNS)


def _count(n: Any) -> str:
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
            reports = _count(r_lo) if r_lo == r_hi else f"{_count(r_lo)}-{_count(r_hi)}"
            parts.append(
                f"aggregate model (Prio3 secure aggregation, central DP): {mech}, "
                f"{draws} draws per figure (one per aggregator){eps_txt}; "
                f"{reports} reports (devices) per batch"
            )
        else:
            devices = part["devices"].max()
            parts.append(
                f"local model (each device adds its own noise): {mech}, one draw per "
                f"device and figure{eps_txt}; {_count(devices)} devices"
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
) -> FleetReport:
    """Run every query the report needs."""
    level = check_level(level)
    q: dict[str, Any] = {"level": level, "since": since, "until": until}
    totals = fleet_totals(conn, signal=signal, **q)
    summary = cell_summary(conn, signal=signal, **q)
    sources = figure_sources(conn, signal=signal, since=since, until=until)
    views: list[SignalView] = []
    for name in sorted(totals["signal"].unique().to_list()):
        rows = totals.filter(pl.col("signal") == name)
        kinds = set(rows["kind"].unique().to_list())
        labels = _labels_of(totals, name)
        label = _PRIMARY_LABEL if _PRIMARY_LABEL in labels else (labels[0] if labels else None)
        by = (label,) if label else ()
        windows = rows["window_start"].n_unique()
        origin = describe_origin(sources, name)
        if "counter" in kinds:
            per = signal_totals(conn, name, by=by, **q)
            cells = signal_totals(conn, name, by=labels, per_window=False, **q)
            views.append(
                SignalView(
                    name, "counter", "", label, tuple(labels), windows, per, cells, None, origin
                )
            )
        elif "sum" in kinds:
            per = mean_by_labels(conn, name, by=by, **q)
            cells = mean_by_labels(conn, name, by=labels, per_window=False, **q)
            buckets = histogram_buckets(conn, name, by=labels, **q) if "bucket" in kinds else None
            unit = _unit(conn, name)
            views.append(
                SignalView(
                    name,
                    "histogram",
                    unit,
                    label,
                    tuple(labels),
                    windows,
                    per,
                    cells,
                    buckets,
                    origin,
                )
            )
    fleet = _fleet(conn, totals, level=level, since=since, until=until)
    return FleetReport(
        level, datetime.now(UTC), source, totals, summary, tuple(views), fleet, sources
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


def _fleet(
    conn: duckdb.DuckDBPyConnection,
    totals: pl.DataFrame,
    *,
    level: float,
    since: datetime | None,
    until: datetime | None,
) -> pl.DataFrame:
    """Fleet totals per window: from each signal's scalar totals under the local model
    (one noise draw per device instead of one per cell), from its cells added under the
    aggregate model (two central draws per cell, whatever the fleet's size)."""
    has_total = (pl.col("kind") == "total") | (
        (pl.col("privacy_model") == "aggregate") & pl.col("kind").is_in(["counter", "count"])
    )
    has_sum = pl.col("kind").is_in(["total_sum"]) | (
        (pl.col("privacy_model") == "aggregate") & (pl.col("kind") == "sum")
    )
    frames = []
    for name in sorted(totals.filter(has_total)["signal"].unique().to_list()):
        tot = grand_totals(conn, name, level=level, since=since, until=until)
        frames.append(tot.with_columns(signal=pl.lit(name), measure=pl.lit("total")))
        if totals.filter((pl.col("signal") == name) & has_sum).height:
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


def _fmt(value: float | None, measure: str, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if measure == "mean":
        return f"{value:.{digits}g}"
    return f"{value:,.0f}"


def _figures(est: float | None, lo: float | None, hi: float | None, measure: str) -> list[str]:
    """[estimate, '[low, high]'] with enough digits to tell the bounds apart."""
    digits = 3
    if measure == "mean" and est is not None and lo is not None and hi is not None:
        width, size = hi - lo, max(abs(est), abs(lo), abs(hi))
        if width > 0.0 and math.isfinite(size):
            digits = min(8, max(3, math.ceil(math.log10(size / width)) + 2))
    return [
        _fmt(est, measure, digits),
        f"[{_fmt(lo, measure, digits)}, {_fmt(hi, measure, digits)}]",
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
            *_figures(row["estimate"], row["ci_low"], row["ci_high"], m),
            _count(row["devices"]),
            row["privacy_model"],
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
                cells.append(f"{_figures(t, lo, hi, m)[0]} {mark}")
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
                *_figures(row["estimate"], row["ci_low"], row["ci_high"], m),
                _count(row["devices"]),
                row["interval"],
            )
        console.print(table)
    console.print(_METHODS)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 66rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2.2rem; }
h3 { font-size: 1rem; margin-top: 1.4rem; }
table { border-collapse: collapse; font-size: 0.82rem; margin: 0.6rem 0; }
th, td { padding: 0.2rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }
td { white-space: nowrap; } th { vertical-align: bottom; }
th.l, td.l { text-align: left; }
.note { color: #555; font-size: 0.9rem; } .origin { color: #335; font-size: 0.85rem; }
svg { max-width: 100%; height: auto; }
"""


def _table_html(head: list[tuple[str, bool]], rows: list[list[str]]) -> str:
    """A table; `head` is (title, left-aligned) per column."""
    th = "".join(f"<th class='{'l' if left else ''}'>{html.escape(h)}</th>" for h, left in head)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='{'l' if left else ''}'>{html.escape(c)}</td>"
            for c, (_, left) in zip(r, head, strict=True)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _fleet_html(report: FleetReport) -> list[str]:
    pct = f"{report.level * 100:g}%"
    out = ["<h2>Fleet totals per window</h2>"]
    out.append(
        "<p class='note'>Each signal over all its cells. Local model: from each device's one "
        "noisy total per window. Aggregate model: the cells' secure aggregates added (two "
        "central noise draws per cell, however large the fleet).</p>"
    )
    rows = [
        [
            r["signal"],
            r["measure"],
            f"{r['window_start']:%Y-%m-%d %H:%M}",
            *_figures(r["estimate"], r["ci_low"], r["ci_high"], r["measure"]),
            _count(r["devices"]),
            r["privacy_model"],
            r["interval"],
        ]
        for r in report.fleet.to_dicts()
    ]
    head = [
        ("signal", True),
        ("measure", True),
        ("window (UTC)", True),
        ("estimate", False),
        (f"{pct} interval", False),
        ("devices", False),
        ("privacy", True),
        ("method", True),
    ]
    out.append(_table_html(head, rows))
    if report.fleet["window_start"].n_unique() > 1:
        out.append(fleet_figure(report.fleet))
    return out


def _omitted(frame: pl.DataFrame, value: str, labels: tuple[str, ...]) -> str:
    bad = frame.filter(
        pl.col("ci_low").is_null() | pl.col("ci_high").is_null() | pl.col(value).is_nan()
    )
    if not bad.height:
        return ""
    names = [" ".join(f"{k}={r[k]}" for k in labels) or "(all)" for r in bad.to_dicts()]
    return (
        f"<p class='note'>Not estimable at this noise level (the count's interval includes "
        f"zero), left out: {html.escape(', '.join(names))}.</p>"
    )


def _names(frame: pl.DataFrame, labels: tuple[str, ...]) -> list[str]:
    return [" ".join(f"{k}={r[k]}" for k in labels) or "(all)" for r in frame.to_dicts()]


def _cells_html(view: SignalView, level: float) -> list[str]:
    """The per-cell figure over the range: means (histogram) or totals (counter)."""
    pct = f"{level * 100:g}%"
    value = "mean" if view.kind == "histogram" else "estimate"
    what = f"mean ({view.unit})" if view.kind == "histogram" else "total"
    bounded = view.cells.filter(pl.col("ci_low").is_not_null() & pl.col(value).is_not_nan())
    if not bounded.height:
        return [
            f"<p class='note'>{html.escape(view.signal)}: no cell is estimable at this noise "
            "level (every count's interval includes zero).</p>"
        ]
    grouped = set(view.labels) == {_PRIMARY_LABEL, _SERIES_LABEL}
    span = "over the range" if view.windows > 1 else "in the window"
    if grouped:
        title = f"{view.signal}: {what} per {_PRIMARY_LABEL} and {_SERIES_LABEL} {span}"
        out = [
            f"<h3>{html.escape(what.capitalize())} per ({_SERIES_LABEL} x {_PRIMARY_LABEL})</h3>"
        ]
        out.append(
            grouped_figure(
                view.cells,
                value,
                _PRIMARY_LABEL,
                _SERIES_LABEL,
                f"{title}, {pct} intervals",
                what,
                floor=view.kind == "counter",
                label_format="{:.3g}" if view.kind == "histogram" else "{:,.0f}",
            )
        )
    else:
        out = [f"<h3>{html.escape(what.capitalize())} per cell</h3>"]
        out.append(
            cells_figure(
                view.cells,
                value,
                _names(view.cells, view.labels),
                f"{view.signal}: {what} per cell {span}, {pct} intervals",
                what,
                floor=view.kind == "counter",
            )
        )
    out.append(_omitted(view.cells, value, view.labels) if view.kind == "histogram" else "")
    return out


def _buckets_html(view: SignalView, report: FleetReport) -> list[str]:
    buckets = view.buckets
    if buckets is None or not buckets.height:
        return []
    counts = report.summary.filter(
        (pl.col("signal") == view.signal) & (pl.col("measure") == "count")
    )
    events = {
        tuple(json.loads(r["attributes"]).get(k, "") for k in view.labels): r
        for r in counts.to_dicts()
    }
    cells = []
    skipped = []
    for key, part in buckets.group_by(list(view.labels), maintain_order=True):
        name = " ".join(f"{k}={v}" for k, v in zip(view.labels, key, strict=True)) or "(all)"
        count = events.get(tuple(key))
        # A cell whose event count may be zero is noise only: its buckets are not drawn.
        if count is None or count["ci_low"] is None or count["ci_low"] <= 0.0:
            skipped.append(name)
            continue
        cells.append((name, part.sort("bucket_index"), float(count["estimate"])))
    out = [f"<h3>Distribution per cell ({html.escape(view.signal)} buckets)</h3>"]
    if cells:
        cells.sort(key=lambda c: c[0])
        out.append(
            buckets_figure(
                cells,
                f"{view.signal}: events per bucket ({view.unit}), "
                f"{report.level * 100:g}% intervals",
            )
        )
    if skipped:
        out.append(
            "<p class='note'>Cells whose event count is not clearly above zero, not drawn: "
            f"{html.escape(', '.join(sorted(skipped)))}.</p>"
        )
    return out


def _signal_html(view: SignalView, report: FleetReport) -> list[str]:
    pct = f"{report.level * 100:g}%"
    out = [
        f"<h2>{html.escape(view.signal)}</h2>",
        f"<p class='origin'>{html.escape(view.origin)}</p>",
    ]
    out += _cells_html(view, report.level)
    if view.windows > 1:
        value = "mean" if view.kind == "histogram" else "estimate"
        what = "mean per window" if view.kind == "histogram" else "total per window"
        fig = window_figure(
            view.per_window,
            value,
            view.label,
            f"{view.signal}: {what}, {pct} intervals",
            view.unit if view.kind == "histogram" else "total",
        )
        if fig is not None:
            out += [f"<h3>{what.capitalize()}</h3>", fig]
    if view.kind == "histogram":
        out += _buckets_html(view, report)
    return out


def _sources_html(report: FleetReport) -> list[str]:
    head = [
        ("signal", True),
        ("figure", True),
        ("privacy", True),
        ("mechanism", True),
        ("draws", False),
        ("scale (units)", False),
        ("unit", False),
        ("ε", False),
        ("windows", False),
        ("releases", False),
        ("devices", False),
    ]
    rows = []
    for r in report.sources.to_dicts():
        lo, hi = r["scale_min"], r["scale_max"]
        scale = f"{lo:,.6g}" if lo == hi else f"{lo:,.6g}-{hi:,.6g}"
        if r["privacy_model"] == "aggregate":
            a, b = r["reports_min"], r["reports_max"]
            who = f"{_count(a)} per batch" if a == b else f"{_count(a)}-{_count(b)} per batch"
        else:
            who = f"{_count(r['devices'])} devices"
        rows.append(
            [
                r["signal"],
                r["kind"],
                r["privacy_model"],
                r["mechanism"],
                str(r["draws"]),
                scale,
                f"{r['resolution']:.4g}",
                "—" if r["epsilon"] is None else f"{r['epsilon']:.3g}",
                str(r["windows"]),
                _count(r["releases"]),
                who,
            ]
        )
    return [
        "<h2>Where the figures come from</h2>",
        "<p class='note'>Per signal and kind of figure: the privacy model, the noise "
        "mechanism, its draws per figure (one per aggregator for secure aggregates), its "
        "scale in units, the value of one unit (secure aggregates of sums are integers in "
        "units), the ε of one release, and how many devices contributed (local) or "
        "reports each batch summed (aggregate; releases are then batches).</p>",
        _table_html(head, rows),
    ]


def _summary_html(report: FleetReport) -> str:
    pct = f"{report.level * 100:g}%"
    head = [
        ("signal", True),
        ("cell", True),
        ("measure", True),
        ("estimate", False),
        (f"{pct} interval", False),
        ("devices", False),
        ("privacy", True),
        ("method", True),
    ]
    rows = []
    for r in report.summary.to_dicts():
        m = r["measure"]
        rows.append(
            [
                r["signal"],
                cell_label(r["attributes"]),
                m,
                *_figures(r["estimate"], r["ci_low"], r["ci_high"], m),
                _count(r["devices"]),
                r["privacy_model"],
                r["interval"],
            ]
        )
    return _table_html(head, rows)


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
        "<p class='note'>Every figure is differentially private. Under the <b>aggregate</b> "
        "model it is a secure aggregate: the devices' bounded contributions summed by two "
        "aggregators (Prio3), each adding one discrete Laplace draw. Under the <b>local</b> "
        "model it is the sum of the devices' own noisy releases. Bars are "
        f"{pct} confidence intervals for the fleet's true value, derived from each "
        "figure's noise mechanism and scale (method: normal approximation for many draws, "
        "exact quantiles of the noise for secure aggregates, a conservative bound for few "
        "devices). Values are unbiased for the truth after the contribution bounds.</p>",
    ]
    if not totals.height:
        parts.append("<p class='note'>No released values in the selected range.</p>")
    if report.fleet.height:
        parts += _fleet_html(report)
    for view in report.views:
        parts += _signal_html(view, report)
    if report.sources.height:
        parts += _sources_html(report)
    parts.append("<h2>Summary over the range</h2>")
    parts.append(_summary_html(report))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    return out
