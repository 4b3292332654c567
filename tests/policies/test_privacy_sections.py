"""The privacy engine's policy parts: the budget plan and the fingerprint signal."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import DEFAULT_POLICY_PATH, PolicyError, load_policy
from schemas import Tier


def _default_data() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def _error(tmp_path: Path, data: object) -> PolicyError:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value


def test_default_policy_plans_exactly_its_daily_cap() -> None:
    policy = load_policy()
    assert policy.planned_daily_epsilon == pytest.approx(policy.privacy.daily_epsilon)
    content = [s for s in policy.signals.values() if s.tier is Tier.CONTENT]
    assert content, "the default policy declares a content-tier signal"
    assert policy.fingerprints is not None
    assert policy.fingerprints.signal in policy.signals


def test_fingerprint_signal_must_exist(tmp_path: Path) -> None:
    data = _default_data()
    data["fingerprints"]["signal"] = "app.crashes"
    error = _error(tmp_path, data)
    assert error.key == "fingerprints.signal"
    assert "not in the catalogue" in error.reason


def test_fingerprint_signal_must_be_a_health_counter(tmp_path: Path) -> None:
    data = _default_data()
    data["signals"]["app.exceptions"]["tier"] = "performance"
    assert "health tier" in _error(tmp_path, data).reason


def test_fingerprint_signal_may_carry_other_labels_but_must_carry_the_fingerprint(
    tmp_path: Path,
) -> None:
    policy = load_policy()
    signal = policy.signals["app.exceptions"]
    assert list(signal.attributes) == ["fingerprint", "route", "model"]
    data = _default_data()
    attributes = data["signals"]["app.exceptions"]["attributes"]
    del attributes["fingerprint"]
    error = _error(tmp_path, data)
    assert error.key == "fingerprints.label"
    assert "must declare the fingerprint label 'fingerprint'" in error.reason
    assert "(it declares 'model', 'route')" in error.reason  # as written (keys sorted)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["b00", "/home/alice"], "known fingerprints"),
        (["b00", "b02"], "without gaps"),
        (["b00", "0123456789ABCDEF"], "known fingerprints"),  # lowercase hex only
    ],
)
def test_fingerprint_domain_is_buckets_or_known_fingerprints(
    tmp_path: Path, values: list[str], reason: str
) -> None:
    data = _default_data()
    data["signals"]["app.exceptions"]["attributes"]["fingerprint"] = values
    error = _error(tmp_path, data)
    assert error.key == "signals.app.exceptions.attributes.fingerprint"
    assert reason in error.reason


def test_total_share_must_leave_epsilon_for_the_cells(tmp_path: Path) -> None:
    data = _default_data()
    data["signals"]["inference.requests"]["total_share"] = 1.0
    assert _error(tmp_path, data).key == "signals.inference.requests.total_share"
