"""Privacy-budget arithmetic: what a window's releases cost, and the day they count to.

Shared by the client's ledger (which charges a release before it is made) and the
ingest's (which charges an envelope before acknowledging it), so the two cannot price
the same releases differently. Pure DP with basic composition, as `PrivacyCaps` states:
releasing a signal for one window costs its worst-case loss once (its cells, its
totals and its Prio3 parts split its `epsilon` between them; a local release whose
parts cannot all be at their worst at once costs less: `policies._charge`), and
releases add up.

Sums are exact decimals of the epsilons' shortest float form, so 0.1 charged ten times
reaches a cap of 1.0 exactly, neither early nor late, on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Context, Decimal

from policies._model import Policy

__all__ = ["EXACT_EPSILON", "budget_day", "epsilon_decimal", "window_charge"]

EXACT_EPSILON = Context(prec=60)
"""Wide enough that sums of float reprs are exact."""


def epsilon_decimal(epsilon: float) -> Decimal:
    """`epsilon` as the exact decimal of its shortest float form (0.1 -> Decimal('0.1'))."""
    return Decimal(repr(float(epsilon)))


def window_charge(policy: Policy, signals: Iterable[str]) -> Decimal:
    """What releasing `signals` for one window costs under `policy`: each distinct
    signal's worst-case loss once (`policies._charge.release_epsilon`: its epsilon, or
    less where its parts cannot all be at their worst for one pair of windows), summed
    exactly. KeyError for a signal the policy lacks."""
    from policies._charge import release_epsilon  # _charge builds on this module

    total = Decimal(0)
    for name in sorted(set(signals)):
        total = EXACT_EPSILON.add(total, release_epsilon(policy.signals[name]))
    return total


def budget_day(at: datetime) -> str:
    """The UTC day (ISO date) a charge made at `at` counts to; `at` must be aware."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("`at` must be timezone-aware (budgets count UTC days)")
    return at.astimezone(UTC).date().isoformat()
