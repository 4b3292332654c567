"""The cost plots (inline SVG, in the style of `analytics._plots`): the breakdown per
route and model version, and a what-if's baseline against its projection.

Like every report plot, each draws an estimate with its interval and leaves out what the
data cannot bound; a plot with nothing to draw is None, for the report to say "not
estimable" instead of drawing an empty chart.
"""

from __future__ import annotations

import polars as pl

from analytics._plots import cells_figure, grouped_figure

__all__ = ["COST_MEASURES", "cost_figure", "what_if_change_figure", "what_if_figure"]

COST_MEASURES = {
    "cost": "cost",
    "cost_per_inference": "cost per inference",
    "cost_per_1k_tokens": "cost per 1,000 tokens",
}


def cost_figure(breakdown: pl.DataFrame, measure: str = "cost_per_inference") -> str | None:
    """`measure` per route (x) and model version (series) in the latest charge period of a
    `cost_breakdown` frame; with several regions, one x category per route and region.
    None if no priced cell has an interval."""
    if measure not in COST_MEASURES:
        raise ValueError(f"measure must be one of {sorted(COST_MEASURES)}, got {measure!r}")
    priced = breakdown.filter(pl.col("priced") & pl.col(f"{measure}_low").is_not_null())
    if priced.is_empty():
        return None
    latest = priced["charge_period_start"].max()
    data = priced.filter(pl.col("charge_period_start") == latest)
    several = data["region"].n_unique() > 1
    data = data.with_columns(
        route=pl.col("route") + " in " + pl.col("region") if several else pl.col("route"),
        ci_low=pl.col(f"{measure}_low"),
        ci_high=pl.col(f"{measure}_high"),
    )
    currency = data["currency"][0]
    period = data["charge_period_start"][0].strftime("%Y-%m-%d")
    return grouped_figure(
        data,
        measure,
        "route",
        "model",
        f"{COST_MEASURES[measure].capitalize()} by route and model version ({period}, "
        f"{data['level'][0]:.0%} intervals)",
        f"{COST_MEASURES[measure]} ({currency})",
    )


def what_if_figure(projection: pl.DataFrame) -> str | None:
    """Baseline and projected cost per charge period of a `cost_what_if` frame, each with
    its interval; the title gives the move. None if no period has both intervals."""
    rows: list[dict[str, object]] = []
    for row in projection.iter_rows(named=True):
        period = row["charge_period_start"].strftime("%Y-%m-%d")
        for scenario, prefix in (("baseline", "baseline_cost"), ("projected", "projected_cost")):
            if row[f"{prefix}_low"] is None or row[prefix] is None:
                continue
            rows.append(
                {
                    "period": period,
                    "scenario": scenario,
                    "cost": row[prefix],
                    "ci_low": row[f"{prefix}_low"],
                    "ci_high": row[f"{prefix}_high"],
                }
            )
    if not rows:
        return None
    first = projection.row(0, named=True)
    title = (
        f"What-if: {first['share']:.0%} of cloud traffic to {first['target']} "
        f"({first['level']:.0%} intervals, each estimate at the Bonferroni level)"
    )
    return grouped_figure(
        pl.DataFrame(rows), "cost", "period", "scenario", title, f"cost ({first['currency']})"
    )


def what_if_change_figure(projection: pl.DataFrame) -> str | None:
    """The what-if's change in cost (projected - baseline) per charge period with its
    interval, against zero: a saving is credible when the interval lies below it. None
    if no period's change is bounded."""
    data = projection.filter(pl.col("change_low").is_not_null()).with_columns(
        ci_low=pl.col("change_low"), ci_high=pl.col("change_high")
    )
    if data.is_empty():
        return None
    first = data.row(0, named=True)
    names = [f"{d:%Y-%m-%d}" for d in data["charge_period_start"].to_list()]
    return cells_figure(
        data,
        "change",
        names,
        f"Change in cost if {first['share']:.0%} of cloud traffic moved to {first['target']} "
        f"({first['level']:.0%} intervals)",
        f"projected - baseline ({first['currency']}; below 0: a saving)",
    )
