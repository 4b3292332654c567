"""What one window's release of a signal costs: its worst-case privacy loss.

Under the local model a signal releases up to four parts per window, each through its
own Laplace measurement calibrated to the part's sensitivity D (the L1 diameter of
what the part can release) and the part's share of the signal's epsilon
(`local_parts`): the per-cell counts (D = 2 x bound), a histogram's per-cell sums
(D = 2 x sum cap), and with `total_share` the scalar totals (count: D = bound; sum:
D = sum cap, or twice it for values of both signs). A Laplace part at distance d costs
epsilon_part x d / D, and the parts add up (basic composition), but the parts cannot
all be at their worst for one pair of windows: the counts of two windows are 2 x bound
apart only when both hold `bound` events in different cells, and then their totals are
equal. So the loss of a release is the largest sum over the *extreme pairs* of
neighbouring windows (`neighbour_profiles`): a full window against an empty one, and
two full windows with their events in different cells. The loss is linear in the
parts' distances over a polytope of pairs, so these vertices give the maximum;
tests/client/test_privacy_charge.py checks them against every pair of small windows
through the client's own clamping and OpenDP's own privacy maps.

A counter with a total share of half its 0.5 epsilon is charged 0.375, not 0.5 (the
full-against-empty pair: 0.125 for the cells at half their diameter plus 0.25 for the
total). A signal with no total and at least two cells costs its whole epsilon.

Aggregate-model signals are priced at their declared epsilon (their Prio3 parts are
noised by the aggregators, per task, as `policies._tasks` states).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from policies._budget import EXACT_EPSILON, epsilon_decimal
from policies._model import CounterSignal, HistogramSignal
from policies._tasks import cell_labels

__all__ = ["LocalPart", "LocalParts", "local_parts", "neighbour_profiles", "release_epsilon"]

LocalPart = Literal["cells", "sums", "total", "total_sum"]
_HALF, _ONE = Decimal("0.5"), Decimal(1)


@dataclass(frozen=True, slots=True)
class LocalParts:
    """How a local signal's epsilon is shared between its releases (0: not released).

    Counters use `cells` and `total`; histograms `cells` (bucket counts), `sums`,
    `total` (event count) and `total_sum`. The parts never add up (in floating point)
    to more than the signal's epsilon.
    """

    cells: float
    sums: float
    total: float
    total_sum: float

    def of(self, part: LocalPart) -> float:
        """The epsilon of `part`."""
        value: float = getattr(self, part)
        return value


def _split(epsilon: float, share: float) -> tuple[float, float]:
    """(epsilon - part, part) with part = epsilon * share; their float sum <= epsilon."""
    part = epsilon * share
    rest = epsilon - part
    while rest + part > epsilon:
        rest = math.nextafter(rest, 0.0)
    return rest, part


def local_parts(signal: CounterSignal | HistogramSignal) -> LocalParts:
    """The policy's split of `signal.epsilon` (`total_share`, then `sum_share`)."""
    cells, total = _split(signal.epsilon, signal.total_share)
    if isinstance(signal, CounterSignal):
        return LocalParts(cells=cells, sums=0.0, total=total, total_sum=0.0)
    count, sums = _split(cells, signal.sum_share)
    t_count, t_sum = _split(total, signal.sum_share) if total > 0.0 else (0.0, 0.0)
    return LocalParts(cells=count, sums=sums, total=t_count, total_sum=t_sum)


def neighbour_profiles(signal: CounterSignal | HistogramSignal) -> list[dict[LocalPart, Decimal]]:
    """The extreme pairs of neighbouring windows of a local signal: for each, every
    part's distance as a fraction of the part's sensitivity D (see the module)."""
    several_cells = len(cell_labels(signal.attributes)) >= 2
    if isinstance(signal, CounterSignal):
        # Full against empty: the cells are `bound` apart (half their diameter), the
        # totals `bound` (all of theirs). Two full windows in different cells: 2 x bound
        # apart, equal totals.
        profiles: list[dict[LocalPart, Decimal]] = [{"cells": _HALF, "total": _ONE}]
        if several_cells:
            profiles.append({"cells": _ONE})
        return profiles
    lo, hi = signal.value_range
    if lo < 0.0 < hi:
        # Sums of both signs: the sum total's diameter is twice the cap. Full against
        # empty moves each sum part by the cap; two full windows of opposite sums by
        # twice the cap, in one cell or two.
        return [
            {"cells": _HALF, "total": _ONE, "sums": _HALF, "total_sum": _HALF},
            {"cells": _ONE, "sums": _ONE, "total_sum": _ONE},
        ]
    # One sign: full against empty moves everything by its bound; two full windows with
    # their events in different buckets are 2 x bound apart in counts, and their sums
    # either sit in different cells (2 x cap apart, equal totals) or one is 0.
    profiles = [
        {"cells": _HALF, "total": _ONE, "sums": _HALF, "total_sum": _ONE},
        {"cells": _ONE, "sums": _HALF, "total_sum": _ONE},
    ]
    if several_cells:
        profiles.append({"cells": _ONE, "sums": _ONE})
    return profiles


def release_epsilon(signal: CounterSignal | HistogramSignal) -> Decimal:
    """The worst-case privacy loss of releasing `signal` for one window, exactly."""
    if signal.privacy_model == "aggregate":
        return epsilon_decimal(signal.epsilon)
    parts = local_parts(signal)
    worst = Decimal(0)
    for profile in neighbour_profiles(signal):
        loss = Decimal(0)
        for part, fraction in profile.items():
            eps = parts.of(part)
            if eps > 0.0:
                loss = EXACT_EPSILON.add(
                    loss, EXACT_EPSILON.multiply(epsilon_decimal(eps), fraction)
                )
        worst = max(worst, loss)
    return worst
