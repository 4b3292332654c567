"""The canary section (`canary:`): the shipped policies read it, and a malformed one names its
key and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import (
    DEFAULT_POLICY_PATH,
    PILOT_POLICY_PATH,
    CanaryPolicy,
    PolicyError,
    load_policy,
)


def _data(path: Path = DEFAULT_POLICY_PATH) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _error(tmp_path: Path, data: dict[str, Any]) -> PolicyError:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value


@pytest.mark.parametrize("path", [DEFAULT_POLICY_PATH, PILOT_POLICY_PATH])
def test_shipped_policies_judge_the_four_metrics(path: Path) -> None:
    canary = load_policy(path).canary
    assert canary is not None
    assert canary.cohort_label == "model"
    assert set(canary.metrics) == {"latency", "error_rate", "exceptions", "tokens"}
    latency = canary.metrics["latency"]
    assert (latency.effect, latency.max_increase) == ("ratio", 0.10)
    errors = canary.metrics["error_rate"]
    assert (errors.effect, errors.per_request, errors.max_increase) == (
        "difference",
        "inference.requests",
        0.01,
    )


def test_thresholds_do_not_change_the_policy_hash(tmp_path: Path) -> None:
    data = _data()
    data["canary"]["metrics"]["latency"]["max_increase"] = 0.5
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    # Devices' envelopes and Prio3 tasks are keyed by the hash: a threshold is analytics'.
    assert load_policy(path).content_hash == load_policy().content_hash


def test_a_policy_without_the_section_has_none(tmp_path: Path) -> None:
    data = _data()
    del data["canary"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_policy(path).canary is None
    assert CanaryPolicy().metrics["latency"].signal == "gen_ai.client.operation.duration"


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (
            {"metrics": {"latency": {"signal": "gen_ai.client.operation.duration"}}},
            "canary.metrics.latency.effect",
            "Field required",
        ),
        (
            {
                "metrics": {
                    "l": {
                        "signal": "nope.signal",
                        "effect": "ratio",
                        "max_increase": 0.1,
                        "max_interval_width": 0.5,
                    }
                }
            },
            "canary.metrics.l.signal",
            "signal 'nope.signal' is not in the catalogue",
        ),
        (
            {
                "metrics": {
                    "l": {
                        "signal": "inference.requests",
                        "effect": "ratio",
                        "max_increase": 0.1,
                        "max_interval_width": 0.5,
                    }
                }
            },
            "canary.metrics.l.signal",
            "effect 'ratio' needs a histogram; 'inference.requests' is a counter",
        ),
        (
            {
                "metrics": {
                    "e": {
                        "signal": "inference.errors",
                        "effect": "difference",
                        "per_request": "gen_ai.client.operation.duration",
                        "max_increase": 0.01,
                        "max_interval_width": 0.05,
                    }
                }
            },
            "canary.metrics.e.per_request",
            "effect 'difference' needs a counter",
        ),
        (
            {
                "metrics": {
                    "e": {
                        "signal": "inference.errors",
                        "effect": "difference",
                        "max_increase": 0.01,
                        "max_interval_width": 0.05,
                    }
                }
            },
            "canary.metrics.e",
            "a difference of rates needs per_request",
        ),
        (
            {
                "metrics": {
                    "l": {
                        "signal": "gen_ai.client.operation.duration",
                        "effect": "ratio",
                        "max_increase": -0.1,
                        "max_interval_width": 0.5,
                    }
                }
            },
            "canary.metrics.l.max_increase",
            "greater than 0",
        ),
        (
            {
                "metrics": {
                    "l": {
                        "signal": "gen_ai.client.operation.duration",
                        "effect": "ratio",
                        "max_increase": 0.1,
                        "max_interval_width": 0.5,
                        "min_event": 10,
                    }
                }
            },
            "canary.metrics.l.min_event",
            "Extra inputs are not permitted",
        ),
        ({"metrics": {}}, "canary.metrics", "at least 1 item"),
        ({"level": 1.0}, "canary.level", "less than 1"),
        ({"unavailable": "skip"}, "canary.unavailable", "'hold' or 'ignore'"),
        ({"cohort_label": "route"}, "canary", "cohort_label and route_label must differ"),
        ({"routes": ["local", "local"]}, "canary", "a route is listed twice in routes"),
        ({"routes": []}, "canary.routes", "at least 1 item"),
        ({"cohort_label": "Model"}, "canary.cohort_label", "should match pattern"),
    ],
)
def test_a_bad_canary_section_names_its_key(
    tmp_path: Path, change: dict[str, Any], key: str, reason: str
) -> None:
    data = _data()
    data["canary"] = {**data["canary"], **change}
    error = _error(tmp_path, data)
    assert error.key == key
    assert reason in error.reason
