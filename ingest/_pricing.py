"""What an envelope costs a device's privacy budget, by the policy it names.

The same price the client's ledger charged before releasing (`policies.window_charge`):
every signal an envelope releases, as local releases (its `aggregates`, cells and
totals alike) or as Prio3 reports (one per task part), costs that signal's epsilon
once; an envelope is one window. Only a policy the ingest serves in full can be
priced: its hash alone says nothing of its signals' epsilons nor of its daily cap.
Pure logic after construction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from policies import Policy, aggregation_tasks, epsilon_decimal, window_charge
from schemas import EnvelopeV1

__all__ = ["EnvelopePrice", "EnvelopePricing"]


@dataclass(frozen=True, slots=True)
class EnvelopePrice:
    """An envelope's charge and the daily cap of the policy it was released under."""

    epsilon: Decimal
    daily_cap: Decimal | None
    """None: a policy known by hash only (then the envelope releases nothing)."""


_FREE = EnvelopePrice(Decimal(0), None)
_MAX_CACHED = 4096
"""Distinct (policy, signal set) charges kept: subsets of a policy's declared signals,
so a bounded few in practice; the bound keeps a device from growing it."""


class EnvelopePricing:
    """Prices envelopes under the policies the ingest serves (by content hash)."""

    __slots__ = ("_caps", "_charges", "_policies", "_task_signals")

    def __init__(self, policies: Iterable[Policy]) -> None:
        self._policies = {p.content_hash: p for p in policies}
        self._caps = {
            h: epsilon_decimal(p.privacy.daily_epsilon) for h, p in self._policies.items()
        }
        self._task_signals = {
            h: {task_id: task.signal for task_id, task in aggregation_tasks(p).items()}
            for h, p in self._policies.items()
        }
        # (policy, signals) -> charge: a pure function of the two, and a fleet sends the
        # same few signal sets all day (exact decimal sums cost tens of µs each).
        self._charges: dict[tuple[str, frozenset[str]], Decimal] = {}

    def price(self, env: EnvelopeV1) -> EnvelopePrice | None:
        """The envelope's price; None if it releases something under a policy this
        ingest knows by hash only (it cannot be priced)."""
        policy = self._policies.get(env.policy_hash)
        if policy is None:
            return _FREE if not env.aggregates and not env.reports else None
        tasks = self._task_signals[env.policy_hash]
        signals = frozenset({a.signal for a in env.aggregates}) | {
            tasks.get(r.task, r.task) for r in env.reports
        }
        cap = self._caps[env.policy_hash]
        key = (env.policy_hash, signals)
        charge = self._charges.get(key)
        if charge is None:
            try:
                charge = window_charge(policy, signals)
            except KeyError:
                # Unreachable after verification (undeclared signals and tasks are
                # refused first); priced at the whole day's cap so such an envelope is
                # never free. (Not cached: the set is not one the policy declares.)
                return EnvelopePrice(cap, cap)
            if len(self._charges) < _MAX_CACHED:
                self._charges[key] = charge
        return EnvelopePrice(charge, cap)
