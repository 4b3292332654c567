"""Typed policy: the signal catalogue and the privacy parameters of each signal.

Attribute labels have a declared, finite domain: a released histogram's keys leak as
much as its counts, so the client releases every cell of the declared domain (zeros
included) and maps an undeclared value to `other` instead of sending it verbatim.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import Tier

__all__ = ["OTHER", "AttributeDomain", "CounterSignal", "HistogramSignal", "Policy", "Signal"]

OTHER = "other"

_NAME = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=128)]
_LABEL = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=64)]
_VALUE = Annotated[str, Field(min_length=1, max_length=128)]

AttributeDomain = dict[_LABEL, list[_VALUE]]


class _SignalBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tier: Tier
    unit: str = Field(default="1", max_length=32)
    description: str = ""
    attributes: AttributeDomain = Field(default_factory=dict)
    epsilon: float = Field(gt=0.0, le=10.0, description="pure-DP loss charged per window")

    @model_validator(mode="after")
    def _check_domains(self) -> _SignalBase:
        for label, values in self.attributes.items():
            if not values:
                raise ValueError(f"attribute {label!r} declares an empty domain")
            if len(set(values)) != len(values):
                raise ValueError(f"attribute {label!r} lists a value twice")
            if OTHER in values:
                raise ValueError(f"attribute {label!r}: {OTHER!r} is implicit, do not list it")
        return self


class CounterSignal(_SignalBase):
    """A count per window; one device adds at most `max_per_window` across all cells."""

    kind: Literal["counter"] = "counter"
    max_per_window: int = Field(ge=1, le=1_000_000)


class HistogramSignal(_SignalBase):
    """A distribution per window: bucket counts plus a bounded sum for the mean."""

    kind: Literal["histogram"] = "histogram"
    buckets: list[float] = Field(min_length=1, max_length=64)
    max_events_per_window: int = Field(ge=1, le=1_000_000)
    value_range: tuple[float, float]
    sum_share: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="share of epsilon spent on the sum"
    )

    @model_validator(mode="after")
    def _check_buckets(self) -> HistogramSignal:
        if any(b <= a for a, b in zip(self.buckets, self.buckets[1:], strict=False)):
            raise ValueError("buckets must be strictly increasing")
        lo, hi = self.value_range
        if not lo < hi:
            raise ValueError("value_range must be [low, high] with low < high")
        return self


Signal = Annotated[CounterSignal | HistogramSignal, Field(discriminator="kind")]


class Policy(BaseModel):
    """The whole policy a fleet runs under. Its content hash travels in every envelope."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1]
    window_seconds: int = Field(ge=1, le=86_400)
    signals: dict[_NAME, Signal] = Field(min_length=1)

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of the validated policy (formatting-independent)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
