"""The HTML report's sections beyond fleet figures: drift, canary, cost, audit.

Each section has an id (`drift`, `canary`, `cost`, `audit`) and draws a plot only when
it has data; otherwise it says why ("not estimable", "no canary rules"), so no empty
chart is ever drawn.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl

from analytics._auditor import ChainStatus
from analytics._cost_plots import cost_figure, what_if_figure
from analytics._drift_plot import drift_plot
from analytics._insights import ReportInsights

__all__ = ["insights_html"]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—"
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    return str(value)


def frame_table(frame: pl.DataFrame, columns: Sequence[str]) -> str:
    """An HTML table of `columns` (those present) of `frame`; numbers right-aligned."""
    cols = [c for c in columns if c in frame.columns]
    numeric = {c for c in cols if frame.schema[c].is_numeric()}
    head = "".join(f"<th class='{'' if c in numeric else 'l'}'>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='{'' if c in numeric else 'l'}'>{html.escape(_fmt(v))}</td>"
            for c, v in zip(cols, row, strict=True)
        )
        + "</tr>"
        for row in frame.select(cols).iter_rows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def _notes(insights: ReportInsights, prefix: str) -> list[str]:
    return [_note(n) for n in insights.notes if n.startswith(prefix)]


def _drift_html(insights: ReportInsights) -> list[str]:
    out = ["<h2 id='drift'>Drift between model versions</h2>"]
    out.append(
        _note(
            "Each histogram's canary cohort against the baseline, per route: PSI, "
            "Jensen-Shannon and Wasserstein distances and the mean shift, each against a "
            "threshold from a null distribution simulated from the declared noise of the "
            "very cells compared (and the events' sampling). The bands are the noise's."
        )
    )
    out += _notes(insights, "drift:")
    for result in insights.drift:
        out.append(f"<h3>{html.escape(result.signal)}: {html.escape(result.b)}</h3>")
        p = "—" if result.p_value is None else f"{result.p_value:.3g}"
        out.append(
            _note(
                f"Verdict: {result.verdict} (family p-value {p}, alpha {result.alpha:g}); "
                f"baseline {result.a}, canary {result.b}."
            )
        )
        out.append(
            frame_table(
                result.statistics,
                ["statistic", "value", "threshold", "p_value", "verdict", "events_a", "events_b"],
            )
        )
        plot = drift_plot(result)
        out.append(plot if plot else _note("Not estimable: a side has no events above noise."))
    return out


def _canary_html(insights: ReportInsights) -> list[str]:
    out = ["<h2 id='canary'>Canary verdict</h2>"]
    out += _notes(insights, "canary:")
    if insights.canary is None:
        return out
    v = insights.canary.verdict
    out.append(
        f"<p class='verdict'>Overall: <b>{html.escape(v.verdict.value)}</b> "
        f"(canary {html.escape(v.canary)} against {html.escape(v.baseline)}, "
        f"by {html.escape(v.cohort_label)}; {v.level * 100:g}% intervals)</p>"
    )
    for r in v.routes:
        out.append(
            f"<p class='note'>route {html.escape(r.route)}: <b>{html.escape(r.verdict.value)}"
            "</b></p>"
        )
    for reason in v.reasons:
        out.append(_note(reason))
    out.append(
        frame_table(
            insights.canary.evidence,
            [
                "route",
                "route_verdict",
                "metric",
                "effect",
                "estimate",
                "ci_low",
                "ci_high",
                "threshold",
                "status",
                "canary_events",
                "baseline_events",
                "reason",
            ],
        )
    )
    return out


def _cost_html(insights: ReportInsights) -> list[str]:
    out = ["<h2 id='cost'>Cost per inference</h2>"]
    out += _notes(insights, "cost:")
    if insights.cost is None:
        return out
    cost = insights.cost
    out.append(
        frame_table(
            cost,
            [
                "region",
                "route",
                "model",
                "requests",
                "cost",
                "cost_low",
                "cost_high",
                "cost_per_inference",
                "cost_per_inference_low",
                "cost_per_inference_high",
                "cost_per_1k_tokens",
                "currency",
            ],
        )
    )
    plot = cost_figure(cost)
    out.append(plot if plot else _note("Cost per inference: not estimable at this noise level."))
    if insights.what_if is not None:
        share = f"{insights.what_if_share * 100:g}%"
        out.append(f"<h3>What if {share} of cloud traffic moved to {insights.what_if_target}</h3>")
        out.append(frame_table(insights.what_if, list(insights.what_if.columns)))
        plot = what_if_figure(insights.what_if)
        out.append(plot if plot else _note("What-if: not estimable at this noise level."))
    return out


def _audit_html(insights: ReportInsights) -> list[str]:
    out = ["<h2 id='audit'>Retention and audit</h2>"]
    auditor = insights.auditor
    if auditor is None:
        return [*out, _note("No auditor view was built.")]
    chain = auditor.chain
    if chain is None:
        out.append(_note("Audit log: not given (pass --audit-log to verify its chain)."))
    else:
        out.append(f"<p class='verdict'>Audit log: <b>{html.escape(_chain_text(chain))}</b></p>")
    pending = auditor.erasures_pending
    out.append(_note(f"Deleted but not yet erased from the file: {pending}."))
    out.append("<h3>Data held, by table, tier and region</h3>")
    out.append(frame_table(auditor.inventory, list(auditor.inventory.columns)))
    out.append(f"<h3>Retention runs ({auditor.retention.height} rows)</h3>")
    if auditor.retention.height:
        out.append(frame_table(auditor.retention, list(auditor.retention.columns)))
    out.append(f"<h3>Deletion requests ({auditor.deletions.height})</h3>")
    if auditor.deletions.height:
        out.append(frame_table(auditor.deletions, list(auditor.deletions.columns)))
    return out


def _chain_text(chain: ChainStatus) -> str:
    if chain.ok:
        anchored = ", to the anchored head" if chain.anchored else ""
        return f"chain verifies ({chain.entries} entries{anchored})"
    where = f"at entry {chain.broken_at}" if chain.broken_at is not None else "at its end"
    return f"chain BROKEN {where}: {chain.problem}"


def insights_html(insights: ReportInsights) -> list[str]:
    """The four sections, in order: drift, canary, cost, audit."""
    return [
        *_drift_html(insights),
        *_canary_html(insights),
        *_cost_html(insights),
        *_audit_html(insights),
    ]
