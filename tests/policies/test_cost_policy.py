"""The cost model in a policy file: its prices, its references, its errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import (
    DEFAULT_POLICY_PATH,
    PILOT_POLICY_PATH,
    PolicyError,
    dump_policy,
    load_policy,
)

_STABLE = "qwen2.5-7b@1.0"


def _data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    return data


def _error(tmp_path: Path, data: dict[str, Any]) -> PolicyError:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value


def test_default_and_pilot_policies_price_every_route_alike() -> None:
    default, pilot = load_policy(), load_policy(PILOT_POLICY_PATH)
    assert default.cost is not None
    assert pilot.cost == default.cost
    cost = default.cost
    assert cost.currency == "USD"
    assert cost.charge_period == "day"
    assert set(cost.cloud) == set(default.signals["inference.requests"].attributes["model"])
    stable = cost.cloud[_STABLE]
    # 75% input at 0.0003, 25% output at 0.0009 per 1,000 tokens.
    assert stable.per_1k_tokens == pytest.approx(0.75 * 0.0003 + 0.25 * 0.0009)
    # 0.01 Wh at 0.30 per kWh.
    assert cost.local.per_inference == pytest.approx(0.01 / 1000 * 0.30)


def test_prices_are_left_out_of_the_content_hash(tmp_path: Path) -> None:
    base = load_policy()
    data = _data()
    data["cost"]["edge"]["per_gpu_second"] = 0.5
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    changed = load_policy(path)
    assert changed.cost is not None
    assert changed.cost.edge.per_gpu_second == 0.5
    assert changed.content_hash == base.content_hash
    del data["cost"]
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    without = load_policy(path)
    assert without.cost is None
    assert without.content_hash == base.content_hash


def test_a_dumped_policy_keeps_its_cost_model(tmp_path: Path) -> None:
    policy = load_policy()
    assert load_policy(dump_policy(policy, tmp_path / "p.yaml")).cost == policy.cost


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (
            lambda c: c["cloud"][_STABLE].update(input_per_1k_tokens=-0.1),
            f"cost.cloud.{_STABLE}.input_per_1k_tokens",
            "a price cannot be negative, got -0.1",
        ),
        (
            lambda c: c["edge"].update(per_gpu_second=-1.0),
            "cost.edge.per_gpu_second",
            "a price cannot be negative",
        ),
        (
            lambda c: c["local"].update(price_per_kwh=float("inf")),
            "cost.local.price_per_kwh",
            "must be a finite number, got inf",
        ),
        (
            lambda c: c["cloud"].update({"llama-3@2.0": c["cloud"][_STABLE]}),
            "cost.cloud.llama-3@2.0",
            "unknown model 'llama-3@2.0': inference.requests declares",
        ),
        (
            lambda c: c["cloud"].pop(_STABLE),
            "cost.cloud",
            f"no cloud price for model(s) ['{_STABLE}']",
        ),
        (
            lambda c: c["cloud"][_STABLE].update(input_token_share=1.5),
            f"cost.cloud.{_STABLE}.input_token_share",
            "less than or equal to 1",
        ),
        (lambda c: c.update(currency="usd"), "cost.currency", "should match pattern"),
        (lambda c: c.update(charge_period="hour"), "cost.charge_period", "'day', 'week'"),
        (
            lambda c: c.update(tokens_signal="app.exceptions"),
            "cost.tokens_signal",
            "signal 'app.exceptions' must be a histogram, not a counter",
        ),
        (
            lambda c: c.update(latency_signal="no.such.signal"),
            "cost.latency_signal",
            "signal 'no.such.signal' is not in the catalogue",
        ),
        (
            lambda c: c.update(requests_signal="prompt.personal_data"),
            "cost.requests_signal",
            "signal 'prompt.personal_data' has no 'route' attribute",
        ),
        (lambda c: c["edge"].pop("per_gpu_second"), "cost.edge.per_gpu_second", "Field required"),
        (lambda c: c["local"].update(watts=30), "cost.local.watts", "Extra inputs"),
    ],
)
def test_a_bad_cost_model_names_its_key_and_reason(
    tmp_path: Path, edit: Any, key: str, reason: str
) -> None:
    data = _data()
    cost = copy.deepcopy(data["cost"])
    edit(cost)
    data["cost"] = cost
    err = _error(tmp_path, data)
    assert err.key == key
    assert reason in err.reason


def test_a_route_missing_from_a_domain_is_refused(tmp_path: Path) -> None:
    data = _data()
    data["signals"]["gen_ai.client.token.usage"]["attributes"]["route"] = ["local", "cloud"]
    err = _error(tmp_path, data)
    assert err.key == "cost.tokens_signal"
    assert err.reason == "signal 'gen_ai.client.token.usage' declares no route 'edge'"
