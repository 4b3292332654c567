"""The pilot policy (the demo's) is the default policy with a larger budget, nothing else."""

from __future__ import annotations

from policies import PILOT_POLICY_PATH, load_policy

PILOT = PILOT_POLICY_PATH
BUDGET_FACTOR = 8


def test_pilot_differs_from_default_only_in_budget() -> None:
    default, pilot = load_policy(), load_policy(PILOT)
    assert pilot.privacy.daily_epsilon == BUDGET_FACTOR * default.privacy.daily_epsilon
    assert pilot.privacy.lifetime_epsilon == BUDGET_FACTOR * default.privacy.lifetime_epsilon
    assert pilot.signals.keys() == default.signals.keys()
    for name, spec in default.signals.items():
        assert pilot.signals[name].epsilon == BUDGET_FACTOR * spec.epsilon, name
        rest = {"epsilon"}
        assert pilot.signals[name].model_dump(exclude=rest) == spec.model_dump(exclude=rest)
    rest_top = {"signals", "privacy"}
    assert pilot.model_dump(exclude=rest_top) == default.model_dump(exclude=rest_top)
    privacy_rest = {"daily_epsilon", "lifetime_epsilon"}
    assert pilot.privacy.model_dump(exclude=privacy_rest) == default.privacy.model_dump(
        exclude=privacy_rest
    )


def test_pilot_budget_is_spent_exactly_per_day() -> None:
    pilot = load_policy(PILOT)
    per_window = sum(s.epsilon for s in pilot.signals.values())
    windows_per_day = 86_400 // pilot.window_seconds
    assert per_window * windows_per_day == pilot.privacy.daily_epsilon
