"""The fleet report as one self-contained HTML page: tables and inline SVG plots.

In order: fleet totals per window; per signal, where its figures come from, its means
(histogram) or totals (counter) per (model x route) or per cell, per window by route,
and its distribution per cell from the buckets; then where every figure comes from and
the summary over the range. Plots are `analytics._plots`, so the file needs no network.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path

import polars as pl

from analytics._html_insights import insights_html
from analytics._plots import (
    buckets_figure,
    cell_label,
    cells_figure,
    fleet_figure,
    grouped_figure,
    window_figure,
)
from analytics._report import (
    PRIMARY_LABEL,
    SERIES_LABEL,
    FleetReport,
    SignalView,
    format_count,
    format_interval,
)

__all__ = ["render_html"]

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
        "noisy total per window. Aggregate model: the secure aggregate of the signal's "
        "total task (two central noise draws, however large the fleet), or its cells' "
        "added where it has none.</p>"
    )
    rows = [
        [
            r["signal"],
            r["measure"],
            f"{r['window_start']:%Y-%m-%d %H:%M}",
            *format_interval(r["estimate"], r["ci_low"], r["ci_high"], r["measure"]),
            format_count(r["devices"]),
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
    grouped = set(view.labels) == {PRIMARY_LABEL, SERIES_LABEL}
    span = "over the range" if view.windows > 1 else "in the window"
    if grouped:
        title = f"{view.signal}: {what} per {PRIMARY_LABEL} and {SERIES_LABEL} {span}"
        out = [f"<h3>{html.escape(what.capitalize())} per ({SERIES_LABEL} x {PRIMARY_LABEL})</h3>"]
        out.append(
            grouped_figure(
                view.cells,
                value,
                PRIMARY_LABEL,
                SERIES_LABEL,
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
            who = (
                f"{format_count(a)} per batch"
                if a == b
                else f"{format_count(a)}-{format_count(b)} per batch"
            )
        else:
            who = f"{format_count(r['devices'])} devices"
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
                format_count(r["releases"]),
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
                *format_interval(r["estimate"], r["ci_low"], r["ci_high"], m),
                format_count(r["devices"]),
                r["privacy_model"],
                r["interval"],
            ]
        )
    return _table_html(head, rows)


def _basis_html(report: FleetReport) -> list[str]:
    """Devices by key anchoring, releases withheld, and what the intervals cover."""
    basis = report.basis
    out = ["<h2 id='basis'>What the figures rest on</h2>"]
    out.append(f"<p class='note'>{html.escape(basis.statement)}</p>")
    if basis.devices.height:
        rows = [
            [
                f"{r['window_start']:%Y-%m-%d %H:%M}",
                format_count(r["devices"]),
                format_count(r["attested"]),
                format_count(r["software"]),
            ]
            for r in basis.devices.to_dicts()
        ]
        head = [
            ("window (UTC)", True),
            ("devices", False),
            ("attested (TPM key)", False),
            ("software key", False),
        ]
        out.append(_table_html(head, rows))
    if basis.suppressed.height:
        out.append(
            "<h3>Releases withheld</h3><p class='note'>A device whose privacy budget was "
            "spent withholds the release and says so; its usage is in no total above.</p>"
        )
        rows = [
            [
                r["signal"],
                format_count(r["releases"]),
                format_count(r["devices"]),
                format_count(r["windows"]),
            ]
            for r in basis.suppressed.to_dicts()
        ]
        head = [("signal", True), ("releases", False), ("devices", False), ("windows", False)]
        out.append(_table_html(head, rows))
    else:
        out.append("<p class='note'>Releases withheld (privacy budget spent): none.</p>")
    return out


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
    parts += _basis_html(report)
    for view in report.views:
        parts += _signal_html(view, report)
    if report.sources.height:
        parts += _sources_html(report)
    if report.insights is not None:
        parts += insights_html(report.insights)
    parts.append("<h2 id='summary'>Summary over the range</h2>")
    parts.append(_summary_html(report))
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    return out
