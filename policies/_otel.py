"""The OpenTelemetry mapping (`otel:` in a policy file): which OpenTelemetry instruments
feed which signals, and how their attributes become the signals' labels.

An app instrumented with the OpenTelemetry metrics API records through Quietwire's
`MeterProvider` (`client.otel`). Per instrument name the policy declares the signal it
records into, which OpenTelemetry attribute carries each of the signal's labels, which
attributes are known and deliberately not sent (`ignore`: measurements that differ only
in them share a cell), and the units the instrument may be created with, each with the
factor that converts its values into the signal's unit (`ms: 0.001` for a signal in
seconds). An instrument, attribute or unit the policy does not declare is dropped and
counted on the device, never sent.

The mapping decides what a signal's figures mean (a millisecond read as a second is a
thousandfold error), so unlike `cost` and `canary` it is part of the policy's content
hash (`Policy.content_hash`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = ["OtelInstrument", "OtelPolicy", "otel_reference_problem"]

# OpenTelemetry instrument names are case-insensitive (compared lower-cased, as the SDK
# does); the policy spells them lower-case so a lookup is one dict access.
_INSTRUMENT = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.\-/]*$", max_length=255)]
_ATTRIBUTE = Annotated[str, Field(min_length=1, max_length=128)]
_LABEL = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.]*$", max_length=64)]
_UNIT = Annotated[str, Field(max_length=63)]


def _factor(value: float) -> float:
    if not value > 0.0:
        raise ValueError(f"a unit factor must be a finite number > 0, got {value!r}")
    return value


Factor = Annotated[float, AfterValidator(_factor)]


class OtelInstrument(BaseModel):
    """How one OpenTelemetry instrument records into one signal."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    signal: str = Field(description="the policy signal this instrument records into")
    attributes: dict[_ATTRIBUTE, _LABEL] = Field(
        default_factory=dict,
        description="OpenTelemetry attribute -> the signal's label it carries",
    )
    ignore: list[_ATTRIBUTE] = Field(
        default_factory=list,
        description="attributes known and not sent: measurements that differ only in "
        "them share a cell (neither dropped nor counted)",
    )
    units: dict[_UNIT, Factor] | None = Field(
        default=None,
        description="units the instrument may be created with -> the factor converting its "
        "values into the signal's unit. Unset: the signal's own unit only, factor 1",
    )

    def factor_for(self, unit: str, signal_unit: str) -> float | None:
        """The factor for an instrument created with `unit`, or None if not declared."""
        if self.units is None:
            return 1.0 if unit == signal_unit else None
        return self.units.get(unit)


class OtelPolicy(BaseModel):
    """The OpenTelemetry instruments a policy accepts, by (lower-case) name."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    instruments: dict[_INSTRUMENT, OtelInstrument] = Field(min_length=1)

    def instrument(self, name: str) -> OtelInstrument | None:
        """The mapping of instrument `name` (case-insensitive), or None if undeclared."""
        return self.instruments.get(name.lower())


class SignalShape(Protocol):
    """What the cross-check reads of a catalogue signal."""

    @property
    def kind(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, list[str]]: ...


def otel_reference_problem(
    otel: OtelPolicy, signals: Mapping[str, SignalShape]
) -> tuple[str, str] | None:
    """The first (key under `otel`, reason) where the mapping does not fit the catalogue.

    Every instrument names a signal of the catalogue; every label it maps to is one that
    signal declares, at most once; no attribute is both mapped and ignored; a counter
    signal's unit factors are whole numbers (its amounts stay integers).
    """
    for name, spec in otel.instruments.items():
        where = f"instruments.{name}"
        signal = signals.get(spec.signal)
        if signal is None:
            return f"{where}.signal", f"signal {spec.signal!r} is not in the catalogue"
        for attribute, label in spec.attributes.items():
            if label not in signal.attributes:
                return (
                    f"{where}.attributes.{attribute}",
                    f"signal {spec.signal!r} has no {label!r} attribute",
                )
        labels = list(spec.attributes.values())
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            return f"{where}.attributes", f"label {twice[0]!r} is carried by two attributes"
        both = sorted(set(spec.attributes) & set(spec.ignore))
        if both:
            return f"{where}.ignore", f"attribute {both[0]!r} is both mapped and ignored"
        if signal.kind == "counter" and spec.units is not None:
            for unit, factor in spec.units.items():
                if not factor.is_integer():
                    return (
                        f"{where}.units.{unit}",
                        f"a counter's unit factor must be a whole number, got {factor:g}",
                    )
    return None
