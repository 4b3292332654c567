"""What a local (per-device DP) release must look like under a policy the ingest serves.

A device's release is input, not truth: its labels, its kind, its mechanism, noise
scale, epsilon and clamp bounds must be exactly what the policy makes the client
produce, and its value must be one that noise could have made from a clamped input.
The expected noise of every (signal, kind, measure) is taken from the client's own
release functions run once on an all-zero window at startup (`client._release`), so
the ingest and the client cannot disagree on a scale. Pure logic after construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from client._aggregation import HistogramSnapshot
from client._domain import CellDomain
from client._release import release_counter, release_histogram
from policies import OTHER, CounterSignal, HistogramSignal, Policy
from schemas import CounterAggregate, HistogramAggregate, Mechanism, NoiseSpec, TotalAggregate

__all__ = ["ReleaseShape", "release_problem", "release_shapes"]

# A released value lies within this many noise scales of its clamp interval except with
# probability about exp(-60) (Laplace tails): anything farther was not made by the noise.
_TAIL_SCALES = 60.0


@dataclass(frozen=True, slots=True)
class ReleaseShape:
    """The expected form of one signal's local releases."""

    signal: CounterSignal | HistogramSignal
    noise: Mapping[str, NoiseSpec]
    """By part: `cell` (a counter's cells, a histogram's bucket counts), `sum` (a
    histogram's per-cell sums), `total` (count total), `total_sum`."""


def release_shapes(policy: Policy) -> dict[str, ReleaseShape]:
    """The expected shape of every local-model signal's releases under `policy`."""
    mechanisms = policy.privacy.mechanisms
    out: dict[str, ReleaseShape] = {}
    for name, spec in policy.signals.items():
        if spec.privacy_model != "local":
            continue
        domain = CellDomain(spec.attributes)
        noise: dict[str, NoiseSpec] = {}
        if isinstance(spec, CounterSignal):
            release = release_counter(name, spec, domain, [0] * domain.size, mechanisms.counter)
        else:
            empty = [HistogramSnapshot([0] * (len(spec.buckets) + 1), 0.0)] * domain.size
            release = release_histogram(
                name,
                spec,
                domain,
                empty,
                mechanisms.histogram_counts,
                mechanisms.histogram_sum,
            )
        for aggregate in release.aggregates:
            if isinstance(aggregate, CounterAggregate):
                noise["cell"] = aggregate.noise
            elif isinstance(aggregate, HistogramAggregate):
                noise["cell"] = aggregate.count_noise
                if aggregate.sum_noise is not None:
                    noise["sum"] = aggregate.sum_noise
            else:
                noise["total" if aggregate.measure == "count" else "total_sum"] = aggregate.noise
        out[name] = ReleaseShape(spec, noise)
    return out


def _noise_problem(got: NoiseSpec, want: NoiseSpec | None, what: str) -> str | None:
    if want is None:
        return f"the policy releases no {what}"
    if got.mechanism is not want.mechanism:
        return f"{what}: mechanism {got.mechanism.value}, the policy's is {want.mechanism.value}"
    close = (
        math.isclose(got.scale, want.scale, rel_tol=1e-9)
        and got.epsilon is not None
        and want.epsilon is not None
        and math.isclose(got.epsilon, want.epsilon, rel_tol=1e-9)
        and got.rho is None
        and math.isclose(got.lower, want.lower, rel_tol=1e-9, abs_tol=1e-12)
        and math.isclose(got.upper, want.upper, rel_tol=1e-9, abs_tol=1e-12)
    )
    if not close:
        return (
            f"{what}: noise (scale {got.scale:g}, epsilon {got.epsilon}, bounds "
            f"[{got.lower:g}, {got.upper:g}]) is not the policy's (scale {want.scale:g}, "
            f"epsilon {want.epsilon}, bounds [{want.lower:g}, {want.upper:g}])"
        )
    return None


_INTEGER_MECHANISMS = frozenset({Mechanism.DISCRETE_LAPLACE, Mechanism.DISCRETE_GAUSSIAN})
"""Mechanisms that add integer noise to an integer (clamped count or sum): their
releases are whole numbers."""


def _value_problem(value: float, noise: NoiseSpec, what: str) -> str | None:
    if noise.mechanism in _INTEGER_MECHANISMS and not float(value).is_integer():
        return f"{what}: value {value:g} is not a whole number, as {noise.mechanism} releases"
    slack = _TAIL_SCALES * noise.scale
    if not noise.lower - slack <= value <= noise.upper + slack:
        interval = f"[{noise.lower:g}, {noise.upper:g}]"
        return f"{what}: value {value:g} is not one noise makes from {interval}"
    return None


def _labels_problem(
    signal: CounterSignal | HistogramSignal, attributes: Mapping[str, str]
) -> str | None:
    if set(attributes) != set(signal.attributes):
        return f"labels {sorted(attributes)}, the policy declares {sorted(signal.attributes)}"
    for label, value in attributes.items():
        if value != OTHER and value not in signal.attributes[label]:
            return f"label {label}={value!r} is outside its declared domain (or {OTHER!r})"
    return None


def release_problem(
    shape: ReleaseShape, aggregate: CounterAggregate | HistogramAggregate | TotalAggregate
) -> str | None:
    """Why `aggregate` is not a release the policy's client could make, or None."""
    signal = shape.signal
    if aggregate.unit != signal.unit:
        return f"unit {aggregate.unit!r}, the policy's is {signal.unit!r}"
    if isinstance(aggregate, TotalAggregate):
        part = "total" if aggregate.measure == "count" else "total_sum"
        return _noise_problem(aggregate.noise, shape.noise.get(part), part) or _value_problem(
            aggregate.value, aggregate.noise, part
        )
    if (problem := _labels_problem(signal, aggregate.attributes)) is not None:
        return problem
    if isinstance(aggregate, CounterAggregate):
        if not isinstance(signal, CounterSignal):
            return "a counter release of a histogram signal"
        return _noise_problem(aggregate.noise, shape.noise.get("cell"), "count") or (
            _value_problem(aggregate.value, aggregate.noise, "count")
        )
    if not isinstance(signal, HistogramSignal):
        return "a histogram release of a counter signal"
    if aggregate.bounds != signal.buckets:
        return "bucket bounds differ from the policy's"
    problem = _noise_problem(aggregate.count_noise, shape.noise.get("cell"), "bucket counts")
    for count in aggregate.counts:
        problem = problem or _value_problem(count, aggregate.count_noise, "bucket count")
    if aggregate.sum is None or aggregate.sum_noise is None:
        return problem or "the policy releases a sum with every histogram cell"
    return (
        problem
        or _noise_problem(aggregate.sum_noise, shape.noise.get("sum"), "sum")
        or _value_problem(aggregate.sum, aggregate.sum_noise, "sum")
    )
