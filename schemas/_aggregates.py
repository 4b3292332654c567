"""Released aggregates: what a device sends about one window, after differential privacy.

Every released number carries the mechanism and noise scale that produced it, and the
contribution bounds that capped the device's input, so analytics can give honest
confidence intervals and drift tests can tell noise from change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Aggregate",
    "CounterAggregate",
    "HistogramAggregate",
    "Mechanism",
    "NoiseSpec",
    "Tier",
    "TotalAggregate",
]

_LABEL = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.]*$")]
_LABEL_VALUE = Annotated[str, Field(min_length=1, max_length=128)]
_SIGNAL = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[a-z][a-z0-9_.]*$")]


class Tier(StrEnum):
    """Sensitivity tier of a signal; consent is recorded per tier."""

    HEALTH = "health"
    PERFORMANCE = "performance"
    CONTENT = "content"


class Mechanism(StrEnum):
    """The OpenDP measurement that released a value."""

    DISCRETE_LAPLACE = "discrete_laplace"
    LAPLACE = "laplace"
    DISCRETE_GAUSSIAN = "discrete_gaussian"
    GAUSSIAN = "gaussian"


class NoiseSpec(BaseModel):
    """How a released value was perturbed.

    `scale` is the mechanism's scale parameter as OpenDP defines it (b for Laplace,
    sigma for Gaussian). `epsilon` (pure DP) or `rho` (zCDP) is the privacy loss the
    device charged for the release. `lower`/`upper` are the per-device, per-window
    clamp applied before noise: the release is unbiased for the clamped truth.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mechanism: Mechanism
    scale: float = Field(ge=0.0, allow_inf_nan=False)
    epsilon: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    rho: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    lower: float = Field(allow_inf_nan=False)
    upper: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> NoiseSpec:
        if (self.epsilon is None) == (self.rho is None):
            raise ValueError("exactly one of epsilon (pure DP) or rho (zCDP) must be set")
        if self.lower > self.upper:
            raise ValueError("lower bound exceeds upper bound")
        return self


class _AggregateBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    signal: _SIGNAL
    tier: Tier
    unit: str = Field(default="1", max_length=32)
    attributes: dict[_LABEL, _LABEL_VALUE] = Field(default_factory=dict, max_length=16)


class CounterAggregate(_AggregateBase):
    """A noisy count (or bounded sum) of one signal and label set over one window."""

    kind: Literal["counter"] = "counter"
    value: float = Field(allow_inf_nan=False)
    noise: NoiseSpec


class HistogramAggregate(_AggregateBase):
    """Noisy per-bucket counts, plus an optional noisy bounded sum for means.

    `bounds` are the explicit upper bounds of the buckets (OpenTelemetry style); there
    are len(bounds) + 1 counts, the last one for values above the last bound.
    """

    kind: Literal["histogram"] = "histogram"
    bounds: list[float] = Field(min_length=1, max_length=64)
    counts: list[float] = Field(min_length=2, max_length=65)
    count_noise: NoiseSpec
    sum: float | None = Field(default=None, allow_inf_nan=False)
    sum_noise: NoiseSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> HistogramAggregate:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError("a histogram needs len(bounds) + 1 counts")
        if any(nxt <= cur for cur, nxt in zip(self.bounds, self.bounds[1:], strict=False)):
            raise ValueError("histogram bounds must be strictly increasing")
        if (self.sum is None) != (self.sum_noise is None):
            raise ValueError("sum and sum_noise come together")
        return self


class TotalAggregate(_AggregateBase):
    """One noisy scalar over a signal's whole window, all attribute cells together.

    `measure` is `count` (a counter's total, or a histogram's number of events) or `sum`
    (a histogram's bounded sum of values). One draw at the scalar's own sensitivity
    (the bound, not twice the bound per cell), so fleet totals and fleet means are far
    less noisy than the sum of the per-cell releases. `attributes` is always empty.
    """

    kind: Literal["total"] = "total"
    measure: Literal["count", "sum"]
    value: float = Field(allow_inf_nan=False)
    noise: NoiseSpec

    @model_validator(mode="after")
    def _check(self) -> TotalAggregate:
        if self.attributes:
            raise ValueError("a total covers every cell: it carries no attributes")
        return self


Aggregate = Annotated[
    CounterAggregate | HistogramAggregate | TotalAggregate, Field(discriminator="kind")
]
