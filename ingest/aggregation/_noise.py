"""Central DP noise: each aggregator adds discrete Laplace noise to its aggregate share.

The noise is OpenDP's (`dp.m.make_laplace` on an i64 vector domain with the L1 distance
is the discrete Laplace), at the smallest scale whose own privacy map, at the task's
sensitivity (`AggregationTask.sensitivity`, replace one device's report: 2 x bound for
a vector, bound for a one-entry task such as a total), is at most the task's epsilon.
Each aggregator draws at full scale, so the revealed sum is epsilon-DP even if the
other aggregator adds nothing; the analyst sees two independent draws per entry.

Noise is drawn from OpenDP's sampler, not from numpy or `random`, and added to the
share in the field with `Prio3.add_noise` before the share leaves its aggregator.
`NoiseSource` is the seam: production code builds `DiscreteLaplaceNoise`; tests that
need exact sums pass their own source (nothing in settings or the CLI can).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import opendp.prelude as dp
from quietwire_prio import Prio3

from policies import AggregationTask

__all__ = [
    "DiscreteLaplaceNoise",
    "NoiseDraw",
    "NoiseSource",
    "add_noise",
    "discrete_laplace_measurement",
]

dp.enable_features("contrib")


@dataclass(frozen=True, slots=True)
class NoiseDraw:
    """Signed integer noise per vector entry, and the per-entry scale it was drawn at."""

    values: tuple[int, ...]
    scale: float
    mechanism: Literal["discrete_laplace"] = "discrete_laplace"


class NoiseSource(Protocol):
    """Draws the noise one aggregator adds to one batch's aggregate share of `task`."""

    def draw(self, task: AggregationTask) -> NoiseDraw:
        """A fresh draw of `task.length` entries."""
        ...


@functools.lru_cache(maxsize=256)
def discrete_laplace_measurement(
    length: int, sensitivity: int, epsilon: float
) -> tuple[Any, float]:
    """(OpenDP measurement, scale): the smallest scale that is epsilon-DP at `sensitivity`.

    The scale is searched with `binary_search_param`, then OpenDP's own privacy map is
    evaluated at d_in = sensitivity and must come out at most `epsilon`.
    """
    if length < 1 or sensitivity < 1 or not epsilon > 0.0:
        raise ValueError("length and sensitivity must be >= 1 and epsilon > 0")
    space = dp.vector_domain(dp.atom_domain(T="i64"), size=length), dp.l1_distance(T="i64")

    def make(scale: float) -> Any:
        return dp.m.make_laplace(*space, scale=scale)

    scale = float(dp.binary_search_param(make, d_in=sensitivity, d_out=epsilon))
    meas = make(scale)
    achieved = float(meas.map(sensitivity))
    if not achieved <= epsilon:
        raise ValueError(f"OpenDP maps scale {scale} to {achieved} > epsilon {epsilon}")
    return meas, scale


class DiscreteLaplaceNoise:
    """The production noise: OpenDP discrete Laplace at the task's epsilon."""

    def draw(self, task: AggregationTask) -> NoiseDraw:
        meas, scale = discrete_laplace_measurement(task.length, task.sensitivity, task.epsilon)
        values = meas([0] * task.length)
        return NoiseDraw(tuple(int(v) for v in values), scale)


def add_noise(vdaf: Prio3, agg_share: bytes, draw: NoiseDraw) -> bytes:
    """`agg_share` plus the draw, entry-wise in the field (what leaves the aggregator)."""
    return vdaf.add_noise(agg_share, list(draw.values))
