"""The privacy loss of one window's local release, read off OpenDP's own privacy maps.

`release_loss` composes the measurements the client really releases a signal through
(`client._release`: the same sizes, sensitivities and epsilons, so the same cached
measurements): for each extreme pair of neighbouring windows (`policies.
neighbour_profiles`) it adds up every part's `measurement.map(d)` at that pair's
distance, and takes the largest sum. The ledger charges the policy's price
(`policies.release_epsilon`, shared with the ingest's ledger); `check_charge` refuses a
policy whose OpenDP loss exceeds that price by more than float rounding, and the DP
tests show the two are equal to the last digits OpenDP's calibration leaves.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from client._errors import ReleaseError
from client._release import counter_measurement, sum_measurement
from policies import (
    CounterSignal,
    HistogramSignal,
    LocalPart,
    MechanismChoice,
    cell_labels,
    local_parts,
    neighbour_profiles,
)
from schemas import Mechanism

__all__ = ["ROUNDING", "check_charge", "release_loss"]

ROUNDING = 1e-12
"""Relative excess of OpenDP's float maps over an exact charge that is only rounding."""


def _count_measurement(size: int, d_in: int, epsilon: float, mechanism: Mechanism) -> Any:
    if mechanism is Mechanism.DISCRETE_LAPLACE:
        return counter_measurement(size, d_in, epsilon)[0]
    return sum_measurement(size, float(d_in), epsilon)[0]


def _parts(
    signal: CounterSignal | HistogramSignal, mechanisms: MechanismChoice
) -> dict[LocalPart, tuple[Any, float | int]]:
    """Each released part's OpenDP measurement and sensitivity D, as the release builds it."""
    split = local_parts(signal)
    cells = len(cell_labels(signal.attributes))
    out: dict[LocalPart, tuple[Any, float | int]] = {}
    if isinstance(signal, CounterSignal):
        m, mech = signal.max_per_window, mechanisms.counter
        out["cells"] = (_count_measurement(cells, 2 * m, split.cells, mech), 2 * m)
        if split.total > 0.0:
            out["total"] = (_count_measurement(1, m, split.total, mech), m)
        return out
    n, mech = signal.max_events_per_window, mechanisms.histogram_counts
    lo, hi = signal.value_range
    cap = signal.sum_cap
    width = (cap if hi > 0.0 else 0.0) - (-cap if lo < 0.0 else 0.0)
    buckets = len(signal.buckets) + 1
    out["cells"] = (_count_measurement(cells * buckets, 2 * n, split.cells, mech), 2 * n)
    out["sums"] = (sum_measurement(cells, 2.0 * cap, split.sums)[0], 2.0 * cap)
    if split.total > 0.0:
        out["total"] = (_count_measurement(1, n, split.total, mech), n)
        out["total_sum"] = (sum_measurement(1, width, split.total_sum)[0], width)
    return out


def release_loss(signal: CounterSignal | HistogramSignal, mechanisms: MechanismChoice) -> float:
    """The worst-case epsilon of one window's local release of `signal`, composed from
    OpenDP's privacy maps (rounded up to the next float)."""
    parts = _parts(signal, mechanisms)
    worst = Fraction(0)
    for profile in neighbour_profiles(signal):
        loss = Fraction(0)
        for part, fraction in profile.items():
            if part not in parts:
                continue
            measurement, d_full = parts[part]
            # Fractions are 1 or 1/2 of an even (or float) sensitivity: exact.
            d_in = int(d_full * fraction) if isinstance(d_full, int) else d_full * float(fraction)
            loss += Fraction(float(measurement.map(d_in)))  # exact: no rounding in the sum
        worst = max(worst, loss)
    out = float(worst)
    return out if Fraction(out) >= worst else math.nextafter(out, math.inf)


def check_charge(
    name: str, signal: CounterSignal | HistogramSignal, mechanisms: MechanismChoice, charge: float
) -> None:
    """Refuse (`ReleaseError`) a local signal whose OpenDP loss exceeds its charge."""
    if signal.privacy_model != "local":
        return
    loss = release_loss(signal, mechanisms)
    # OpenDP rounds each map up to a float: half a diameter may cost one ulp more than
    # half the part's epsilon. Beyond that rounding, the charge must cover the loss.
    if loss > charge * (1.0 + ROUNDING):
        raise ReleaseError(
            f"signal {name!r}: OpenDP's composed loss {loss} exceeds the charge {charge}"
        )
