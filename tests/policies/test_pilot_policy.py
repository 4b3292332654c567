"""The pilot policy is the default policy under the local model with a larger budget."""

from __future__ import annotations

from policies import PILOT_POLICY_PATH, load_policy

PILOT = PILOT_POLICY_PATH
BUDGET_FACTOR = 4


def test_pilot_differs_from_default_only_in_budget_and_model() -> None:
    default, pilot = load_policy(), load_policy(PILOT)
    assert pilot.privacy.daily_epsilon == BUDGET_FACTOR * default.privacy.daily_epsilon
    assert pilot.privacy.lifetime_epsilon == BUDGET_FACTOR * default.privacy.lifetime_epsilon
    assert pilot.signals.keys() == default.signals.keys()
    for name, spec in default.signals.items():
        assert pilot.signals[name].epsilon == BUDGET_FACTOR * spec.epsilon, name
        assert pilot.signals[name].privacy_model == "local", name
        # The aggregate model's own knobs (parts, cell caps) do not apply locally.
        rest = {"epsilon", "privacy_model", "parts", "cell_max_events", "cell_max_sum"}
        assert pilot.signals[name].model_dump(exclude=rest) == spec.model_dump(exclude=rest)
    rest_top = {"signals", "privacy", "aggregation"}
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
