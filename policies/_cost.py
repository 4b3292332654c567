"""The cost model (`cost:` in a policy file): what one inference costs on each route.

Prices are the operator's, not measured; analytics multiplies them by what the fleet's
telemetry measured (requests per route and model version, mean latency, mean tokens)
and carries the DP noise of those estimates into the cost's interval
(`analytics._cost`). Per route:

- cloud: a price per 1,000 input tokens and per 1,000 output tokens, per model version.
  The token histogram does not say which tokens were input (an OpenTelemetry app
  records one event per token type, the mapping ignores the type; analytics divides by
  the events per request), so `input_token_share` (from the provider's invoice, say)
  splits them; it is an assumption of the model, stated in the export, not an estimate.
- edge: a price per GPU-second; GPU-seconds are the edge route's latency-seconds times
  `gpu_seconds_per_latency_second` (1.0 bills the whole end-to-end latency: an upper
  bound, since it includes the network).
- local: the energy of one inference (`wh_per_inference`) at `price_per_kwh`: the
  user's electricity, the cost of running the model on their device.

Analytics-only: nothing here changes what a device releases, so the section is left out
of the policy's content hash (`Policy.content_hash`), and a price change needs no new
policy rollout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "ChargePeriod",
    "CloudPrice",
    "CostPolicy",
    "EdgePrice",
    "LocalPrice",
    "cost_reference_problem",
]

ChargePeriod = Literal["day", "week", "month"]
"""The span one cost row covers (FOCUS ChargePeriodStart/End): UTC days, ISO weeks
(from Monday) or calendar months."""


def _price(value: float) -> float:
    if value < 0.0:
        raise ValueError(f"a price cannot be negative, got {value!r}")
    return value


Price = Annotated[float, AfterValidator(_price)]


class CloudPrice(BaseModel):
    """One model version's price on the cloud route, in the policy's currency."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    input_per_1k_tokens: Price
    output_per_1k_tokens: Price
    input_token_share: float = Field(
        ge=0.0,
        le=1.0,
        description="share of a request's tokens that are input (prompt) tokens; the "
        "telemetry does not split them, so the model assumes this split",
    )

    @property
    def per_1k_tokens(self) -> float:
        """The blended price of 1,000 tokens at the assumed input/output split."""
        share = self.input_token_share
        return share * self.input_per_1k_tokens + (1.0 - share) * self.output_per_1k_tokens


class EdgePrice(BaseModel):
    """The edge route: GPU time at a price per GPU-second."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    per_gpu_second: Price
    gpu_seconds_per_latency_second: float = Field(
        default=1.0,
        gt=0.0,
        le=64.0,
        description="GPU-seconds one second of end-to-end latency costs (1.0: the whole "
        "latency; below 1 when part of it is network; above 1 for multi-GPU serving)",
    )


class LocalPrice(BaseModel):
    """The local route: the device's energy per inference at an electricity price."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    wh_per_inference: Price
    price_per_kwh: Price

    @property
    def per_inference(self) -> float:
        """The energy cost of one local inference."""
        return self.wh_per_inference / 1000.0 * self.price_per_kwh


class CostPolicy(BaseModel):
    """Prices per route, the currency and the charge period; which signals measure use."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. USD")
    charge_period: ChargePeriod = "day"
    cloud: dict[str, CloudPrice] = Field(
        min_length=1, description="model version (as the requests signal labels it) -> price"
    )
    edge: EdgePrice
    local: LocalPrice
    requests_signal: str = "inference.requests"
    latency_signal: str = "gen_ai.client.operation.duration"
    tokens_signal: str = "gen_ai.client.token.usage"
    route_label: str = "route"
    model_label: str = "model"


class SignalShape(Protocol):
    """What the reference check needs of a catalogue signal."""

    @property
    def kind(self) -> str: ...

    @property
    def attributes(self) -> Mapping[str, Sequence[str]]: ...


_ROUTES = ("cloud", "edge", "local")


def cost_reference_problem(
    cost: CostPolicy, signals: Mapping[str, SignalShape]
) -> tuple[str, str] | None:
    """The first (key under `cost`, reason) where `cost` does not fit the catalogue.

    The requests counter must be labelled by route and model, the latency and token
    histograms by route; the route domain must hold cloud, edge and local; every model
    version priced must be one the requests signal declares, and every declared one
    priced (cloud traffic of an unpriced version could not be costed).
    """
    needs = (
        ("requests_signal", cost.requests_signal, "counter", (cost.route_label, cost.model_label)),
        ("latency_signal", cost.latency_signal, "histogram", (cost.route_label,)),
        ("tokens_signal", cost.tokens_signal, "histogram", (cost.route_label,)),
    )
    for key, name, kind, labels in needs:
        signal = signals.get(name)
        if signal is None:
            return key, f"signal {name!r} is not in the catalogue"
        if signal.kind != kind:
            return key, f"signal {name!r} must be a {kind}, not a {signal.kind}"
        missing = [label for label in labels if label not in signal.attributes]
        if missing:
            return key, f"signal {name!r} has no {missing[0]!r} attribute"
        routes = signal.attributes[cost.route_label]
        absent = [r for r in _ROUTES if r not in routes]
        if absent:
            return key, f"signal {name!r} declares no route {absent[0]!r}"
    declared = list(signals[cost.requests_signal].attributes[cost.model_label])
    for model in cost.cloud:
        if model not in declared:
            return (
                f"cloud.{model}",
                f"unknown model {model!r}: {cost.requests_signal} declares {declared}",
            )
    unpriced = [m for m in declared if m not in cost.cloud]
    if unpriced:
        return "cloud", f"no cloud price for model(s) {unpriced}"
    return None
