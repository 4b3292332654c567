"""The budget arithmetic the client's ledger and the ingest's share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from policies import EXACT_EPSILON, budget_day, epsilon_decimal, load_policy, window_charge


def test_a_window_charges_each_released_signal_once_exactly() -> None:
    policy = load_policy()
    names = list(policy.signals)
    # Sent twice (a signal's cells and its total), charged once.
    charge = window_charge(policy, [*names, names[0]])
    assert charge == Decimal("4.0")  # default.yaml: the signals add up to its daily cap
    assert window_charge(policy, []) == 0


def test_tenths_reach_one_exactly() -> None:
    total = Decimal(0)
    for _ in range(10):
        total = EXACT_EPSILON.add(total, epsilon_decimal(0.1))
    assert total == Decimal("1.0")


def test_an_undeclared_signal_has_no_price() -> None:
    with pytest.raises(KeyError):
        window_charge(load_policy(), ["no.such.signal"])


def test_the_budget_day_is_the_utc_date() -> None:
    late = datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert budget_day(late) == "2026-03-02"
    assert budget_day(datetime(2026, 3, 1, tzinfo=UTC)) == "2026-03-01"
    with pytest.raises(ValueError, match="timezone-aware"):
        budget_day(datetime(2026, 3, 1))  # naive
