"""Policy files: the default loads, and every kind of bad file names its file, key and reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import policies
from policies import DEFAULT_POLICY_PATH, PolicyError, load_policy
from schemas import Mechanism, Tier


def _default_data() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _error(tmp_path: Path, data: object) -> PolicyError:
    path = _write(tmp_path, data)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    return info.value


def test_public_names_are_pinned() -> None:
    assert set(policies.__all__) == {
        "DEFAULT_ATTESTATION_POLICY_PATH",
        "AttestationPolicy",
        "CanaryMetric",
        "CanaryPolicy",
        "CanaryUnavailable",
        "PcrRule",
        "load_attestation_policy",
        "DEFAULT_POLICY_PATH",
        "PILOT_POLICY_PATH",
        "AggregationPolicy",
        "SCALAR_PARTS",
        "AggregationTask",
        "HelperEndpoint",
        "PrivacyModel",
        "TaskPart",
        "aggregation_tasks",
        "cell_labels",
        "dump_policy",
        "task_context",
        "OTHER",
        "ConsentPolicy",
        "CostPolicy",
        "CloudPrice",
        "EdgePrice",
        "LocalPrice",
        "ChargePeriod",
        "CounterSignal",
        "HistogramSignal",
        "MechanismChoice",
        "OtelInstrument",
        "OtelPolicy",
        "Policy",
        "PolicyError",
        "PrivacyCaps",
        "RetentionPolicy",
        "Signal",
        "TierConsent",
        "FINGERPRINT_DIGITS",
        "FingerprintPolicy",
        "fingerprint_bucket_name",
        "load_policy",
        "EXACT_EPSILON",
        "budget_day",
        "epsilon_decimal",
        "window_charge",
        "LocalPart",
        "LocalParts",
        "local_parts",
        "neighbour_profiles",
        "release_epsilon",
    }


def test_default_policy_states_caps_consent_and_retention() -> None:
    policy = load_policy()
    assert policy.privacy.accounting == "pure_dp"
    assert 0 < policy.privacy.daily_epsilon <= policy.privacy.lifetime_epsilon
    assert all(s.epsilon <= policy.privacy.daily_epsilon for s in policy.signals.values())
    assert policy.privacy.mechanisms.counter is Mechanism.DISCRETE_LAPLACE
    # Opt-in for every tier, content included.
    assert {t: c.default for t, c in policy.consent.tiers.items()} == {
        Tier.HEALTH: "denied",
        Tier.PERFORMANCE: "denied",
        Tier.CONTENT: "denied",
    }
    content = policy.retention.for_tier(Tier.CONTENT)
    assert all(content <= policy.retention.for_tier(t) for t in Tier)
    assert policy.signals["inference.requests"].tier is Tier.PERFORMANCE


def test_content_hash_covers_the_new_sections(tmp_path: Path) -> None:
    base = load_policy().content_hash
    for section, key, value in [
        ("privacy", "daily_epsilon", 5.0),
        ("consent", "notice_version", 2),
    ]:
        data = _default_data()
        data[section][key] = value
        assert load_policy(_write(tmp_path, data)).content_hash != base
    data = _default_data()
    data["retention"]["days"]["content"] = 3
    assert load_policy(_write(tmp_path, data)).content_hash != base


def test_content_hash_ignores_formatting(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("# a comment\n" + yaml.safe_dump(_default_data(), sort_keys=True))
    assert load_policy(path).content_hash == load_policy().content_hash


def _without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return data


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (("privacy",), "privacy"),
        (("privacy", "daily_epsilon"), "privacy.daily_epsilon"),
        (("consent", "notice_version"), "consent.notice_version"),
        (("retention",), "retention"),
        (
            ("signals", "inference.requests", "max_per_window"),
            "signals.inference.requests.max_per_window",
        ),
    ],
)
def test_missing_key(tmp_path: Path, keys: tuple[str, ...], expected: str) -> None:
    error = _error(tmp_path, _without(_default_data(), *keys))
    assert error.key == expected
    assert "required" in error.reason.lower()


def test_missing_tier_in_consent(tmp_path: Path) -> None:
    error = _error(tmp_path, _without(_default_data(), "consent", "tiers", "content"))
    assert error.key == "consent.tiers"
    assert "content" in error.reason


def test_wrong_type(tmp_path: Path) -> None:
    data = _default_data()
    data["privacy"]["daily_epsilon"] = "lots"
    error = _error(tmp_path, data)
    assert error.key == "privacy.daily_epsilon"
    assert "number" in error.reason


def test_wrong_type_in_signal(tmp_path: Path) -> None:
    data = _default_data()
    data["signals"]["gen_ai.client.token.usage"]["max_events_per_window"] = [1]
    error = _error(tmp_path, data)
    assert error.key == "signals.gen_ai.client.token.usage.max_events_per_window"


def test_bucket_order(tmp_path: Path) -> None:
    data = _default_data()
    data["signals"]["gen_ai.client.operation.duration"]["buckets"] = [0.1, 0.05, 1.0]
    error = _error(tmp_path, data)
    assert error.key == "signals.gen_ai.client.operation.duration.buckets"
    assert "strictly increasing" in error.reason


_LATENCY = ("signals", "gen_ai.client.operation.duration")


@pytest.mark.parametrize(
    ("where", "value", "key", "shown"),
    [
        # A NaN edge passes the order check (every comparison with NaN is false).
        (
            (*_LATENCY, "buckets"),
            [0.01, float("nan"), 0.04],
            f"{'.'.join(_LATENCY)}.buckets.1",
            "nan",
        ),
        (
            (*_LATENCY, "buckets"),
            [0.01, 0.02, float("inf")],
            f"{'.'.join(_LATENCY)}.buckets.2",
            "inf",
        ),
        (
            (*_LATENCY, "value_range"),
            [0.0, float("inf")],
            f"{'.'.join(_LATENCY)}.value_range.1",
            "inf",
        ),
        (
            (*_LATENCY, "max_sum_per_window"),
            float("nan"),
            f"{'.'.join(_LATENCY)}.max_sum_per_window",
            "nan",
        ),
        (
            ("signals", "inference.requests", "epsilon"),
            float("nan"),
            "signals.inference.requests.epsilon",
            "nan",
        ),
        (("privacy", "daily_epsilon"), float("inf"), "privacy.daily_epsilon", "inf"),
        (("canary", "level"), float("nan"), "canary.level", "nan"),
        (
            ("canary", "metrics", "latency", "min_events"),
            float("-inf"),
            "canary.metrics.latency.min_events",
            "-inf",
        ),
        (
            ("cost", "edge", "gpu_seconds_per_latency_second"),
            float("nan"),
            "cost.edge.gpu_seconds_per_latency_second",
            "nan",
        ),
    ],
)
def test_every_number_must_be_finite(
    tmp_path: Path, where: tuple[str, ...], value: object, key: str, shown: str
) -> None:
    data = _default_data()
    node = data
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    error = _error(tmp_path, data)
    assert (error.key, error.reason) == (key, f"must be a finite number, got {shown}")


def test_a_value_range_whose_sum_cap_overflows_is_refused(tmp_path: Path) -> None:
    data = _default_data()
    latency = data["signals"]["gen_ai.client.operation.duration"]
    latency.update(privacy_model="local", value_range=[0.0, 1e308])
    for key in ("max_sum_per_window", "cell_max_events", "cell_max_sum", "parts"):
        latency.pop(key, None)
    error = _error(tmp_path, data)
    assert error.key == "signals.gen_ai.client.operation.duration.value_range"
    assert "overflows to infinity" in error.reason


def test_unknown_field(tmp_path: Path) -> None:
    data = _default_data()
    data["privacy"]["weekly_epsilon"] = 3.0
    error = _error(tmp_path, data)
    assert error.key == "privacy.weekly_epsilon"
    assert "not permitted" in error.reason


def test_unknown_field_in_signal(tmp_path: Path) -> None:
    data = _default_data()
    data["signals"]["inference.errors"]["epsilonn"] = 0.1
    error = _error(tmp_path, data)
    assert error.key == "signals.inference.errors.epsilonn"


def test_empty_domain(tmp_path: Path) -> None:
    data = _default_data()
    data["signals"]["inference.errors"]["attributes"]["route"] = []
    error = _error(tmp_path, data)
    assert error.key == "signals.inference.errors.attributes.route"
    assert "empty domain" in error.reason


def test_daily_cap_smaller_than_one_window(tmp_path: Path) -> None:
    data = _default_data()
    data["privacy"]["daily_epsilon"] = 0.1
    error = _error(tmp_path, data)
    assert error.key == "privacy.daily_epsilon"
    assert "smaller than one window's epsilon" in error.reason


def test_lifetime_cap_smaller_than_daily(tmp_path: Path) -> None:
    data = _default_data()
    data["privacy"]["lifetime_epsilon"] = 1.0
    error = _error(tmp_path, data)
    assert error.key == "privacy.lifetime_epsilon"
    assert "smaller than the daily cap" in error.reason


def test_gaussian_refused_under_pure_dp(tmp_path: Path) -> None:
    data = _default_data()
    data["privacy"]["mechanisms"]["histogram_sum"] = "gaussian"
    error = _error(tmp_path, data)
    assert error.key == "privacy.mechanisms.histogram_sum"
    assert "pure-DP" in error.reason


def test_consent_default_cannot_be_granted(tmp_path: Path) -> None:
    data = _default_data()
    data["consent"]["tiers"]["health"]["default"] = "granted"
    error = _error(tmp_path, data)
    assert error.key == "consent.tiers.health.default"


def test_content_retention_must_be_shortest(tmp_path: Path) -> None:
    data = _default_data()
    data["retention"]["days"]["content"] = 400
    error = _error(tmp_path, data)
    assert error.key == "retention.days.content"
    assert "shortest" in error.reason


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nsignals: [unclosed\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert (info.value.path, info.value.key) == (path, "")
    assert "not valid YAML" in info.value.reason


def test_a_yaml_error_is_one_line_with_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nsignals: [unclosed\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value) == (
        f"{path}: not valid YAML at line 3, column 1: expected ',' or ']', but got "
        "'<stream end>' (while parsing a flow sequence from line 2)"
    )
    path.write_text("version: 1\nprivacy: a: b\n", encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert (
        info.value.reason
        == "not valid YAML at line 2, column 11: mapping values are not allowed here"
    )


def test_not_a_mapping(tmp_path: Path) -> None:
    error = _error(tmp_path, ["version", 1])
    assert error.key == ""
    assert "mapping" in error.reason


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.path == path
    assert "cannot read" in info.value.reason


def test_policies_built_in_code_default_to_opt_in_and_bounded_caps() -> None:
    data = _default_data()
    for section in ("privacy", "consent", "retention"):
        del data[section]
    policy = policies.Policy.model_validate(data)
    assert all(c.default == "denied" for c in policy.consent.tiers.values())
    assert set(policy.consent.tiers) == set(Tier)
    assert policy.privacy.daily_epsilon <= 10.0
    assert policy.retention.for_tier(Tier.CONTENT) == min(policy.retention.days.values())
