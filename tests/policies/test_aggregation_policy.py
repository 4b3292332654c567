"""The aggregate privacy model in policy files: defaults, bounds a proof can enforce, tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import (
    DEFAULT_POLICY_PATH,
    SCALAR_PARTS,
    PolicyError,
    aggregation_tasks,
    cell_labels,
    load_policy,
    task_context,
)
from schemas import Tier


def _data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_POLICY_PATH.read_text(encoding="utf-8"))
    return data


def _load(tmp_path: Path, data: dict[str, Any]) -> Any:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_policy(path)


def test_health_and_performance_default_to_aggregate_content_to_local(tmp_path: Path) -> None:
    data = _data()
    for spec in data["signals"].values():
        spec.pop("privacy_model", None)
    policy = _load(tmp_path, data)
    for name, spec in policy.signals.items():
        expected = "local" if spec.tier is Tier.CONTENT else "aggregate"
        assert spec.privacy_model == expected, name


def test_an_aggregate_bound_must_be_one_less_than_a_power_of_two(tmp_path: Path) -> None:
    data = _data()
    data["signals"]["inference.requests"]["max_per_window"] = 500
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, data)
    assert info.value.key == "signals.inference.requests.max_per_window"
    assert "use 255 or 511" in info.value.reason


def test_the_same_bound_is_fine_under_the_local_model(tmp_path: Path) -> None:
    data = _data()
    spec = data["signals"]["inference.requests"]
    del spec["parts"]
    spec.update(max_per_window=500, privacy_model="local")
    assert _load(tmp_path, data).signals["inference.requests"].max_per_window == 500


def test_an_aggregate_signal_has_no_separate_total(tmp_path: Path) -> None:
    data = _data()
    data["signals"]["inference.errors"]["total_share"] = 0.5
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, data)
    assert info.value.key == "signals.inference.errors.total_share"


def test_an_aggregate_histogram_needs_non_negative_values(tmp_path: Path) -> None:
    data = _data()
    spec = data["signals"]["gen_ai.client.operation.duration"]
    spec["value_range"] = [-1.0, 60.0]
    del spec["max_sum_per_window"]
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, data)
    assert info.value.key == "signals.gen_ai.client.operation.duration.value_range"


@pytest.mark.parametrize("key", ["not base64!", "AAAA"])
def test_a_helper_key_must_be_32_bytes_of_base64(tmp_path: Path, key: str) -> None:
    data = _data()
    data["aggregation"]["helper"]["public_key"] = key
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, data)
    assert info.value.key == "aggregation.helper.public_key"


def test_min_batch_size_below_two_is_refused(tmp_path: Path) -> None:
    data = _data()
    data["aggregation"]["min_batch_size"] = 1
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, data)
    assert info.value.key == "aggregation.min_batch_size"


def test_default_policy_tasks() -> None:
    policy = load_policy()
    tasks = aggregation_tasks(policy)
    requests = tasks["inference.requests/cells"]
    # 3 routes + other, 2 models + other
    assert requests.length == len(cell_labels(policy.signals["inference.requests"].attributes))
    assert requests.length == 12
    assert requests.bound == 511
    assert requests.sensitivity == 1022
    latency = "gen_ai.client.operation.duration"
    parts = {t.part for t in tasks.values() if t.signal == latency}
    assert parts == {"buckets", "counts", "sums", "total_events", "total_sum"}
    assert tasks[f"{latency}/buckets"].length == 12 * 15
    assert tasks[f"{latency}/total_events"].length == 1
    assert tasks[f"{latency}/total_events"].bound == 511  # the totals' bound
    assert tasks[f"{latency}/counts"].bound == 127  # the per-cell parts' bound
    sums = tasks[f"{latency}/sums"]
    # each sum cap is exactly the proven bound in units
    assert sums.bound * sums.resolution == pytest.approx(128.0)
    total_sum = tasks[f"{latency}/total_sum"]
    assert total_sum.bound * total_sum.resolution == pytest.approx(1024.0)
    # a histogram's parts never spend more than the signal's epsilon together
    spent = sum(t.epsilon for t in tasks.values() if t.signal == latency)
    assert spent <= policy.signals[latency].epsilon
    assert "prompt.personal_data/cells" not in tasks  # content: local model
    assert all(t.min_batch_size == 100 for t in tasks.values())


def test_sensitivity_is_the_l1_diameter_of_a_report() -> None:
    # Two vectors of non-negative entries with L1 <= bound: 2 x bound apart when there
    # are two entries or more (all in one against all in another); one entry in
    # [0, bound] against another: bound apart, as a report joining or leaving the sum.
    tasks = aggregation_tasks(load_policy())
    scalars = {i: t for i, t in tasks.items() if t.length == 1}
    assert {t.part for t in scalars.values()} == {"total", "total_events", "total_sum"}
    assert len(scalars) == 7
    assert tasks["inference.requests/total"].sensitivity == 511
    for task in tasks.values():
        expected = task.bound if task.part in SCALAR_PARTS else 2 * task.bound
        assert task.sensitivity == expected, task.id


def test_a_signal_without_attributes_has_one_entry_parts(tmp_path: Path) -> None:
    data = _data()
    data["signals"]["inference.errors"]["attributes"] = {}
    for instrument in data["otel"]["instruments"].values():
        if instrument["signal"] == "inference.errors":
            instrument["attributes"] = {}
    data.pop("canary")  # its error-rate metric needs the route and model labels
    cells = aggregation_tasks(_load(tmp_path, data))["inference.errors/cells"]
    assert (cells.length, cells.bound, cells.sensitivity) == (1, 15, 15)


def test_task_context_binds_policy_and_task() -> None:
    a = task_context("a" * 64, "x/cells")
    assert a != task_context("b" * 64, "x/cells")
    assert a != task_context("a" * 64, "y/cells")


def test_cell_labels_match_the_client_cell_order() -> None:
    from client._domain import CellDomain

    attributes = {"route": ["local", "edge"], "model": ["m1"]}
    assert cell_labels(attributes) == CellDomain(attributes).cells()


def test_parts_must_add_up_to_the_signals_epsilon(tmp_path: Path) -> None:
    data = _data()
    data["signals"]["inference.errors"]["parts"] = {"cells": 0.2, "total": 0.2}
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, data)
    assert info.value.key == "signals.inference.errors.parts"
    assert "add up to 0.4" in info.value.reason


def test_a_counter_has_no_histogram_parts(tmp_path: Path) -> None:
    data = _data()
    data["signals"]["inference.errors"]["parts"] = {"cells": 0.2, "sums": 0.3}
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, data)
    assert "unknown part(s) ['sums']" in info.value.reason


def test_cell_caps_must_not_exceed_the_totals_bounds(tmp_path: Path) -> None:
    data = _data()
    data["signals"]["gen_ai.client.operation.duration"]["cell_max_events"] = 1023
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, data)
    assert info.value.key == "signals.gen_ai.client.operation.duration.cell_max_events"


def test_without_parts_a_histogram_splits_in_thirds(tmp_path: Path) -> None:
    data = _data()
    del data["signals"]["gen_ai.client.operation.duration"]["parts"]
    policy = _load(tmp_path, data)
    eps = policy.signals["gen_ai.client.operation.duration"].part_epsilons()
    assert set(eps) == {"buckets", "counts", "sums"}
    assert sum(eps.values()) <= 1.45
