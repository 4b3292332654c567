"""Canary rules (`canary:` in a policy file): when a new model version is promoted, held or
rolled back.

A canary cohort (the devices on a new model version) is compared with a baseline
cohort, route by route, on a few metrics; each metric's effect size (canary against
baseline) comes with a confidence interval that carries the DP noise
(`analytics._canary`). Per metric the policy sets:

- `effect`: `ratio` (a histogram's mean: canary mean / baseline mean - 1, a relative
  change) or `difference` (a counter per request: canary rate - baseline rate, e.g.
  errors per request);
- `max_increase`: the largest regression tolerated, in the effect's unit (0.10 is +10%
  for a ratio, +1 percentage point is 0.01 for a difference);
- the minimum evidence: `min_events` (events, or requests for a rate, on each side),
  `min_devices` (devices behind the figures) and `max_interval_width` (the widest
  interval still worth deciding on). Below it the metric is `insufficient` and the
  verdict holds.

The routes judged are `routes` (default: every route either cohort has figures on).
The rule, per route: rollback when some metric's interval lies wholly above its
`max_increase` (a regression beyond the threshold, at the policy's `level`); promote when
every judged metric's interval lies wholly below it; hold otherwise. A metric whose
signal does not carry the cohort label (or has no figures for both cohorts) is
`unavailable`: it holds the verdict, or with `unavailable: ignore` is listed and
skipped.

Analytics-only: nothing here changes what a device releases, so the section is left out
of the policy's content hash (`Policy.content_hash`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CanaryMetric", "CanaryPolicy", "CanaryUnavailable", "canary_reference_problem"]

_NAME = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=128)]
_LABEL = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=64)]

CanaryUnavailable = Literal["hold", "ignore"]
"""What a metric that cannot be compared does to the verdict: hold it, or be skipped."""


class _SignalKind(Protocol):
    """What the reference check needs of a catalogue signal."""

    @property
    def kind(self) -> str: ...


class CanaryMetric(BaseModel):
    """One metric the canary is judged on, with its threshold and minimum evidence."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    signal: _NAME = Field(description="ratio: a histogram (its mean); difference: a counter")
    effect: Literal["ratio", "difference"] = Field(
        description="ratio: canary mean / baseline mean - 1 (relative change); "
        "difference: canary rate - baseline rate, a rate being signal / per_request"
    )
    per_request: _NAME | None = Field(
        default=None,
        description="difference only: the counter the rate divides by (e.g. requests)",
    )
    max_increase: float = Field(
        gt=0.0,
        le=10.0,
        description="the largest tolerated regression in the effect's unit: 0.1 is +10% "
        "for a ratio, 0.01 is +1 percentage point for a difference",
    )
    min_events: float = Field(
        default=0.0,
        ge=0.0,
        le=1e12,
        description="events (ratio) or requests (difference) each cohort must have, as estimated",
    )
    min_devices: int = Field(
        default=0, ge=0, le=100_000_000, description="devices behind the figures compared"
    )
    max_interval_width: float = Field(
        gt=0.0,
        le=1e6,
        description="the widest effect interval (high - low, in the effect's unit) decided on",
    )

    @model_validator(mode="after")
    def _check_rate(self) -> CanaryMetric:
        if self.effect == "difference" and self.per_request is None:
            raise ValueError("a difference of rates needs per_request (the counter it divides by)")
        if self.effect == "ratio" and self.per_request is not None:
            raise ValueError("per_request is for effect: difference only")
        return self


def _default_metrics() -> dict[str, CanaryMetric]:
    return {
        "latency": CanaryMetric(
            signal="gen_ai.client.operation.duration",
            effect="ratio",
            max_increase=0.10,
            min_events=1000.0,
            max_interval_width=0.5,
        )
    }


class CanaryPolicy(BaseModel):
    """Which label tells the cohorts apart, the interval level, and the metrics."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    cohort_label: _LABEL = Field(
        default="model", description="the attribute whose values are the cohorts"
    )
    route_label: _LABEL = Field(default="route", description="the attribute verdicts split by")
    level: float = Field(
        default=0.9,
        gt=0.0,
        lt=1.0,
        description="two-sided level of each effect interval; each one-sided statement "
        "(regression above, or none beyond, the threshold) holds at (1 + level) / 2",
    )
    routes: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        default=None,
        min_length=1,
        description="the routes judged (e.g. only local, for a canary of the on-device "
        "model); unset: every route either cohort has figures on",
    )
    unavailable: CanaryUnavailable = "hold"
    metrics: dict[_NAME, CanaryMetric] = Field(default_factory=_default_metrics, min_length=1)

    @model_validator(mode="after")
    def _check_labels(self) -> CanaryPolicy:
        if self.cohort_label == self.route_label:
            raise ValueError("cohort_label and route_label must differ")
        if self.routes is not None and len(set(self.routes)) != len(self.routes):
            raise ValueError("a route is listed twice in routes")
        return self


def canary_reference_problem(
    canary: CanaryPolicy, signals: Mapping[str, _SignalKind]
) -> tuple[str, str] | None:
    """The first (key under `canary`, reason) where a metric does not fit the catalogue.

    A ratio's signal must be a histogram; a difference's signal and its per_request
    counter must be counters. Whether they carry the cohort label is a property of the
    stored data (a metric without it is reported unavailable), not checked here.
    """
    for name, metric in canary.metrics.items():
        wanted = "histogram" if metric.effect == "ratio" else "counter"
        refs = [("signal", metric.signal)]
        if metric.per_request is not None:
            refs.append(("per_request", metric.per_request))
        for key, ref in refs:
            signal = signals.get(ref)
            if signal is None:
                return f"metrics.{name}.{key}", f"signal {ref!r} is not in the catalogue"
            if signal.kind != wanted:
                return (
                    f"metrics.{name}.{key}",
                    f"effect {metric.effect!r} needs a {wanted}; {ref!r} is a {signal.kind}",
                )
    return None
