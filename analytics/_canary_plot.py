"""The canary verdict as a plot: each metric's effect per route with its interval, against
the metric's threshold (inline SVG, in the style of `analytics._plots`)."""

from __future__ import annotations

import polars as pl
from matplotlib.figure import Figure

from analytics._canary import CanaryResult
from analytics._canary_verdict import MetricStatus
from analytics._plots import _interval_bars, _svg, _value_limits

__all__ = ["canary_plot"]

_STATUS_COLORS = {
    MetricStatus.REGRESSION.value: "#d62728",
    MetricStatus.PASS.value: "#2ca02c",
    MetricStatus.INCONCLUSIVE.value: "#7f7f7f",
    MetricStatus.INSUFFICIENT.value: "#bcbd22",
}


def canary_plot(result: CanaryResult) -> str | None:
    """One panel per metric with an estimable effect: per route, the effect (a ratio's
    relative change in %, a difference of rates in percentage points) with its interval,
    coloured by status, and the threshold as a dashed line. None when no metric has an
    interval (nothing to draw: say "not estimable" instead)."""
    data = result.evidence.filter(pl.col("ci_low").is_not_null() & pl.col("ci_high").is_not_null())
    if not data.height:
        return None
    metrics = data["metric"].unique(maintain_order=True).to_list()
    fig = Figure(figsize=(8.6, 1.2 + 1.5 * len(metrics)))
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    verdict = result.verdict
    for ax, metric in zip(axes, metrics, strict=True):
        part = data.filter(pl.col("metric") == metric).sort("route")
        scale = 100.0
        unit = "%" if part["effect"][0] == "ratio" else "pp"
        est = [v * scale for v in part["estimate"].to_list()]
        lows = [v * scale for v in part["ci_low"].to_list()]
        highs = [v * scale for v in part["ci_high"].to_list()]
        threshold = float(part["threshold"][0]) * scale
        limits = _value_limits([*est, threshold, 0.0], lows, highs, floor=False)
        for i, row in enumerate(part.iter_rows(named=True)):
            _interval_bars(
                ax,
                [i],
                [est[i]],
                [lows[i]],
                [highs[i]],
                limits,
                color=_STATUS_COLORS.get(row["status"], "#7f7f7f"),
                label=None,
                horizontal=True,
            )
        ax.axvline(0.0, color="#999", linewidth=0.8)
        ax.axvline(threshold, color="#d62728", linewidth=1.0, linestyle="--")
        ax.set_yticks(
            range(part.height),
            [f"{r} ({s})" for r, s in zip(part["route"], part["status"], strict=True)],
            fontsize="small",
        )
        ax.set_ylim(-0.6, part.height - 0.4)
        ax.set_xlim(*limits)
        ax.set_xlabel(f"{metric}: canary against baseline ({unit}); dashed: +{threshold:g}{unit}")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(
        f"Canary {verdict.canary} against {verdict.baseline}: {verdict.verdict.value} "
        f"({verdict.level * 100:g}% intervals)",
        fontsize="medium",
    )
    fig.tight_layout()
    return _svg(fig)
