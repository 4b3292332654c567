"""Intervals for figures made of several noisy estimates: Bonferroni boxes. Pure functions.

A cost is a product of independent estimates (requests x mean tokens x a price), a
what-if a sum of such products. Each estimate's interval (`analytics._totals`,
`analytics._means`: exact, normal or bound) is taken at level 1 - alpha/k, k the number
of estimates the figure depends on; by the union bound all k hold together with
probability at least 1 - alpha, and the figure's interval is its range over that box.

The figures here are multilinear (affine in each estimate with the others fixed) or,
for a ratio of positive estimates, monotone in each: either way the range over a box
is attained at its corners, so evaluating the 2^k corners gives it exactly. A sum of
such figures is bounded by the sum of their ranges (exact when they share no estimate,
wider when they do). The resulting interval covers at least the stated level whatever
the estimates' methods, at the price of being wider than a joint interval would be.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from analytics._intervals import check_level

__all__ = ["Bounded", "box_range", "sum_ranges", "union_level"]


@dataclass(frozen=True, slots=True)
class Bounded:
    """One estimate and its interval at the level the box needs (None: not bounded)."""

    estimate: float
    low: float | None
    high: float | None

    @staticmethod
    def exact(value: float) -> Bounded:
        """A known value: its interval is the point."""
        return Bounded(value, value, value)

    @property
    def bounded(self) -> bool:
        return (
            self.low is not None
            and self.high is not None
            and math.isfinite(self.low)
            and math.isfinite(self.high)
        )


def union_level(level: float, k: int) -> float:
    """The level each of k estimates needs for all k to hold together at `level`."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return 1.0 - (1.0 - check_level(level)) / k


def box_range(
    f: Callable[..., float], args: Sequence[Bounded]
) -> tuple[float, float, float] | None:
    """(estimate, low, high) of f(*args) over the box of the args' intervals.

    f must be multilinear, or monotone in each argument over the box (a ratio whose
    denominator's interval is positive). None if an argument is not bounded.
    """
    estimate = f(*(a.estimate for a in args))
    if not all(a.bounded for a in args):
        return None
    sides = [(a.low, a.high) for a in args]
    values = [f(*corner) for corner in itertools.product(*sides)]
    return estimate, min(values), max(values)


def sum_ranges(ranges: Sequence[tuple[float, float, float]]) -> tuple[float, float, float]:
    """(estimate, low, high) of a sum of figures from their own ranges (see module doc)."""
    return (
        math.fsum(r[0] for r in ranges),
        math.fsum(r[1] for r in ranges),
        math.fsum(r[2] for r in ranges),
    )
