"""The canary verdict a rollout system reads: typed, with stable field names, and the rule
that turns each metric's evidence into promote, hold or rollback. Pure.

JSON shape (`CanaryVerdict.model_dump_json()`; field names are a contract, see
docs/analytics.md): the overall `verdict`, the cohorts compared, the interval `level`,
the `reasons` behind the verdict, and per route its `verdict` and its `metrics`, each
with the evidence (the effect's estimate and interval, the threshold, each cohort's
value, events and devices, the `status` and why).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from policies import CanaryMetric

__all__ = [
    "CanaryVerdict",
    "CohortEvidence",
    "MetricEvidence",
    "MetricStatus",
    "RouteVerdict",
    "Verdict",
    "effect_text",
    "evidence_frame",
    "metric_status",
    "overall_verdict",
    "route_verdict",
]


class Verdict(StrEnum):
    """What to do with the canary."""

    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"


class MetricStatus(StrEnum):
    """What one metric's evidence says."""

    PASS = "pass"
    """The interval lies wholly below the threshold: no regression beyond it."""
    REGRESSION = "regression"
    """The interval lies wholly above the threshold: a regression beyond it."""
    INCONCLUSIVE = "inconclusive"
    """The interval straddles the threshold."""
    INSUFFICIENT = "insufficient"
    """Below the policy's minimum evidence, or the effect is not estimable."""
    UNAVAILABLE = "unavailable"
    """No figures for both cohorts (e.g. the signal does not carry the cohort label)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CohortEvidence(_Frozen):
    """One cohort's side of a metric: its mean or rate, events and devices (estimated)."""

    value: float | None = Field(description="the mean (ratio) or rate (difference)")
    events: float | None = Field(description="the events (ratio) or requests (difference)")
    devices: int | None = Field(description="devices (or batch reports) behind the figures")


class MetricEvidence(_Frozen):
    """A metric on one route: the effect with its interval against the threshold."""

    metric: str
    signal: str
    effect: Literal["ratio", "difference"]
    estimate: float | None = Field(description="ratio: relative change; difference: of rates")
    ci_low: float | None
    ci_high: float | None
    interval: str | None = Field(description="normal, exact or bound: how the quantile was got")
    threshold: float = Field(description="the policy's max_increase, in the effect's unit")
    canary: CohortEvidence
    baseline: CohortEvidence
    status: MetricStatus
    reason: str


class RouteVerdict(_Frozen):
    """The verdict on one route and the evidence per metric."""

    route: str
    verdict: Verdict
    metrics: list[MetricEvidence]


class CanaryVerdict(_Frozen):
    """The canary's verdict, overall and per route, with the evidence behind it."""

    schema_version: Literal[1] = 1
    verdict: Verdict
    cohort_label: str
    canary: str
    baseline: str
    level: float = Field(description="two-sided level of every interval")
    window_start: datetime | None = Field(description="first window compared (UTC)")
    window_end: datetime | None = Field(description="end of the last window compared (UTC)")
    routes: list[RouteVerdict]
    reasons: list[str]


def effect_text(effect: str, value: float | None) -> str:
    """An effect in its unit: a ratio's relative change in %, a difference in pp."""
    if value is None:
        return "—"
    if effect == "ratio":
        return f"{value * 100:+.1f}%"
    return f"{value * 100:+.2f} pp"


def metric_status(
    metric: CanaryMetric,
    estimate: float | None,
    ci_low: float | None,
    ci_high: float | None,
    events: tuple[float | None, float | None],
    devices: int | None,
) -> tuple[MetricStatus, str]:
    """The status of one metric's evidence under `metric`'s threshold and minimums.

    The minimum evidence comes first: below it the metric is insufficient whatever its
    interval says, as the policy asks.
    """
    if estimate is None or ci_low is None or ci_high is None:
        return MetricStatus.INSUFFICIENT, "not estimable: a figure is within its noise of zero"
    fewest = min((e if e is not None else 0.0) for e in events)
    if fewest < metric.min_events:
        return (
            MetricStatus.INSUFFICIENT,
            f"{fewest:,.0f} events on one side, below the minimum {metric.min_events:,.0f}",
        )
    if (devices or 0) < metric.min_devices:
        return (
            MetricStatus.INSUFFICIENT,
            f"{devices or 0:,} devices, below the minimum {metric.min_devices:,}",
        )
    width = ci_high - ci_low
    if width > metric.max_interval_width:
        unit = effect_text(metric.effect, width).lstrip("+")
        most = effect_text(metric.effect, metric.max_interval_width).lstrip("+")
        return MetricStatus.INSUFFICIENT, f"interval {unit} wide, above the maximum {most}"
    limit = effect_text(metric.effect, metric.max_increase)
    if ci_low > metric.max_increase:
        return MetricStatus.REGRESSION, f"interval above the threshold {limit}"
    if ci_high < metric.max_increase:
        return MetricStatus.PASS, f"interval below the threshold {limit}"
    return MetricStatus.INCONCLUSIVE, f"interval straddles the threshold {limit}"


def route_verdict(metrics: list[MetricEvidence], *, ignore_unavailable: bool) -> Verdict:
    """Rollback on any regression; promote when every judged metric passes; else hold.

    Unavailable metrics hold the verdict unless `ignore_unavailable`; a route with no
    judged metric at all holds.
    """
    statuses = [m.status for m in metrics]
    if MetricStatus.REGRESSION in statuses:
        return Verdict.ROLLBACK
    judged = [s for s in statuses if not (s is MetricStatus.UNAVAILABLE and ignore_unavailable)]
    if judged and all(s is MetricStatus.PASS for s in judged):
        return Verdict.PROMOTE
    return Verdict.HOLD


def overall_verdict(routes: list[RouteVerdict]) -> Verdict:
    """Rollback if any route rolls back; promote if every route promotes; else hold."""
    verdicts = [r.verdict for r in routes]
    if Verdict.ROLLBACK in verdicts:
        return Verdict.ROLLBACK
    if verdicts and all(v is Verdict.PROMOTE for v in verdicts):
        return Verdict.PROMOTE
    return Verdict.HOLD


_FRAME_SCHEMA: dict[str, Any] = {
    "verdict": pl.String,
    "canary": pl.String,
    "baseline": pl.String,
    "route": pl.String,
    "route_verdict": pl.String,
    "metric": pl.String,
    "signal": pl.String,
    "effect": pl.String,
    "estimate": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "interval": pl.String,
    "threshold": pl.Float64,
    "status": pl.String,
    "canary_value": pl.Float64,
    "baseline_value": pl.Float64,
    "canary_events": pl.Float64,
    "baseline_events": pl.Float64,
    "devices": pl.Int64,
    "reason": pl.String,
}


def evidence_frame(verdict: CanaryVerdict) -> pl.DataFrame:
    """One row per route and metric: the verdict's evidence as a Polars DataFrame (the
    overall verdict and the cohorts repeated on each row, so a CSV stands alone)."""
    rows = [
        {
            "verdict": verdict.verdict.value,
            "canary": verdict.canary,
            "baseline": verdict.baseline,
            "route": r.route,
            "route_verdict": r.verdict.value,
            "metric": m.metric,
            "signal": m.signal,
            "effect": m.effect,
            "estimate": m.estimate,
            "ci_low": m.ci_low,
            "ci_high": m.ci_high,
            "interval": m.interval,
            "threshold": m.threshold,
            "status": m.status.value,
            "canary_value": m.canary.value,
            "baseline_value": m.baseline.value,
            "canary_events": m.canary.events,
            "baseline_events": m.baseline.events,
            "devices": m.canary.devices,
            "reason": m.reason,
        }
        for r in verdict.routes
        for m in r.metrics
    ]
    return pl.DataFrame(rows, schema=_FRAME_SCHEMA)
