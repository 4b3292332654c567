"""The cost arithmetic on measured use given by hand: price x requests x mean, the
Bonferroni box, per inference and per 1,000 tokens, unpriced and unbounded cells."""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pytest

from analytics._cost import COST_SCHEMA, price_cells
from analytics._cost_box import Bounded, box_range, sum_ranges, union_level
from tests.analytics._cost_fleet import (
    CLOUD_PER_1K,
    COST,
    EDGE_PER_LATENCY_SECOND,
    LOCAL_PER_INFERENCE,
    MODEL,
    hand_measured,
    measured_mean,
    measured_means,
    measured_requests,
)


@pytest.fixture
def priced() -> pl.DataFrame:
    return price_cells(COST, *hand_measured(), 0.95)


def _row(frame: pl.DataFrame, route: str, model: str = MODEL) -> dict[str, Any]:
    return frame.filter((pl.col("route") == route) & (pl.col("model") == model)).row(0, named=True)


def test_the_frame_has_the_documented_schema(priced: pl.DataFrame) -> None:
    assert dict(priced.schema) == COST_SCHEMA
    assert priced.height == 5
    assert set(priced["currency"]) == {"EUR"}


def test_cloud_is_requests_times_mean_tokens_at_the_blended_price(priced: pl.DataFrame) -> None:
    row = _row(priced, "cloud")
    assert row["consumed_unit"] == "Tokens"
    assert row["pricing_unit"] == "1000 Tokens"
    assert row["unit_price"] == pytest.approx(CLOUD_PER_1K)
    assert row["consumed_quantity"] == pytest.approx(1000.0 * 300.0)
    assert row["cost"] == pytest.approx(CLOUD_PER_1K * 300.0)
    # The total's box: requests and mean tokens each at 1 - alpha/2 (index 1).
    assert row["cost_low"] == pytest.approx(CLOUD_PER_1K / 1000 * 950.0 * 288.0)
    assert row["cost_high"] == pytest.approx(CLOUD_PER_1K / 1000 * 1050.0 * 312.0)
    assert row["interval"] == "bonferroni"
    # Per inference: the mean's own interval at the level (index 0).
    assert row["cost_per_inference"] == pytest.approx(CLOUD_PER_1K * 0.3)
    assert row["cost_per_inference_low"] == pytest.approx(CLOUD_PER_1K * 0.29)
    assert row["cost_per_inference_high"] == pytest.approx(CLOUD_PER_1K * 0.31)
    # Tokens are what the cloud bills: its price per 1,000 tokens is exact.
    assert row["cost_per_1k_tokens"] == row["cost_per_1k_tokens_low"]
    assert row["cost_per_1k_tokens"] == pytest.approx(CLOUD_PER_1K)
    # Delta method: price x sqrt(M² V_N + N² se_M²).
    se = CLOUD_PER_1K / 1000 * math.sqrt(300.0**2 * 400.0 + 1000.0**2 * 5.0**2)
    assert row["cost_std_error"] == pytest.approx(se)


def test_edge_bills_gpu_seconds_from_the_latency(priced: pl.DataFrame) -> None:
    row = _row(priced, "edge")
    assert row["consumed_unit"] == "GPU-Seconds"
    # 0.5 GPU-seconds per latency-second.
    assert row["consumed_quantity"] == pytest.approx(2000.0 * 0.4 * 0.5)
    assert row["cost"] == pytest.approx(2000.0 * 0.4 * EDGE_PER_LATENCY_SECOND)
    assert row["cost_low"] == pytest.approx(1930.0 * 0.37 * EDGE_PER_LATENCY_SECOND)
    assert row["cost_high"] == pytest.approx(2070.0 * 0.43 * EDGE_PER_LATENCY_SECOND)
    assert row["cost_per_inference_low"] == pytest.approx(0.38 * EDGE_PER_LATENCY_SECOND)
    # Latency over tokens, both at 1 - alpha/2: the box's corners.
    per_1k = 1000.0 * EDGE_PER_LATENCY_SECOND
    assert row["cost_per_1k_tokens"] == pytest.approx(per_1k * 0.4 / 200.0)
    assert row["cost_per_1k_tokens_low"] == pytest.approx(per_1k * 0.37 / 210.0)
    assert row["cost_per_1k_tokens_high"] == pytest.approx(per_1k * 0.43 / 190.0)


def test_local_energy_is_exact_per_inference(priced: pl.DataFrame) -> None:
    row = _row(priced, "local")
    assert row["consumed_unit"] == "kWh"
    assert row["consumed_quantity"] == pytest.approx(3000.0 * 2.0 / 1000.0)
    assert row["cost_per_inference"] == row["cost_per_inference_low"]
    assert row["cost_per_inference"] == pytest.approx(LOCAL_PER_INFERENCE)
    # One estimate (requests), at the level itself, with its own method.
    assert row["cost_low"] == pytest.approx(2980.0 * LOCAL_PER_INFERENCE)
    assert row["cost_high"] == pytest.approx(3020.0 * LOCAL_PER_INFERENCE)
    assert row["interval"] == "exact"
    assert row["cost_per_1k_tokens_low"] == pytest.approx(1000 * LOCAL_PER_INFERENCE / 260.0)
    assert row["cost_per_1k_tokens_high"] == pytest.approx(1000 * LOCAL_PER_INFERENCE / 240.0)


def test_cells_without_a_price_keep_their_requests_and_no_cost(priced: pl.DataFrame) -> None:
    for route, model in (("cloud", "other"), ("other", MODEL)):
        row = _row(priced, route, model)
        assert row["priced"] is False
        assert row["requests"] > 0
        assert row["cost"] is None
        assert row["cost_low"] is None


def test_an_unbounded_mean_gives_an_estimate_without_interval() -> None:
    requests = measured_requests([("edge", MODEL, 2000.0, 900.0, (1940.0, 2060.0, 1930.0, 2070.0))])
    latency = measured_means(
        [{"route": "edge", "model": MODEL, **measured_mean(0.4, 0.3, (None, None, None, None))}]
    )
    tokens = measured_means(
        [{"route": "edge", **measured_mean(200.0, 4.0, (192.0, 208.0, 190.0, 210.0))}]
    )
    row = price_cells(COST, requests, latency, tokens, 0.95).row(0, named=True)
    assert row["cost"] == pytest.approx(2000.0 * 0.4 * EDGE_PER_LATENCY_SECOND)
    assert row["cost_low"] is None
    assert row["cost_per_inference_low"] is None
    assert row["cost_per_1k_tokens_low"] is None


def test_a_negative_lower_bound_is_clipped_at_zero() -> None:
    requests = measured_requests([("local", MODEL, 10.0, 900.0, (-50.0, 70.0, -60.0, 80.0))])
    tokens = measured_means(
        [{"route": "local", **measured_mean(250.0, 5.0, (240.0, 260.0, 238.0, 262.0))}]
    )
    empty = pl.DataFrame(
        schema={
            "charge_period_start": pl.Datetime("us", "UTC"),
            "charge_period_end": pl.Datetime("us", "UTC"),
            "region": pl.String,
            "route": pl.String,
            "model": pl.String,
            "mean": pl.Float64,
        }
    )
    row = price_cells(COST, requests, empty, tokens, 0.95).row(0, named=True)
    assert row["cost_low"] == 0.0
    assert row["cost_high"] == pytest.approx(70.0 * LOCAL_PER_INFERENCE)


def test_an_estimate_below_zero_is_clipped_at_zero_like_its_interval() -> None:
    """Noise can put a cell's requests or its mean use below zero; no cost is."""
    requests = measured_requests(
        [
            ("local", MODEL, -40.0, 900.0, (-100.0, 20.0, -110.0, 30.0)),
            ("edge", MODEL, 2000.0, 900.0, (1940.0, 2060.0, 1930.0, 2070.0)),
        ]
    )
    latency = measured_means(
        [
            {
                "route": "edge",
                "model": MODEL,
                **measured_mean(-0.05, 0.1, (-0.25, 0.15, -0.28, 0.18)),
            }
        ]
    )
    tokens = measured_means(
        [
            {"route": "local", **measured_mean(250.0, 5.0, (240.0, 260.0, 238.0, 262.0))},
            {"route": "edge", **measured_mean(200.0, 4.0, (192.0, 208.0, 190.0, 210.0))},
        ]
    )
    priced = price_cells(COST, requests, latency, tokens, 0.95)
    local, edge = _row(priced, "local"), _row(priced, "edge")
    assert local["cost"] == local["consumed_quantity"] == 0.0
    assert local["cost_low"] == 0.0
    assert local["cost_high"] == pytest.approx(20.0 * LOCAL_PER_INFERENCE)
    assert edge["cost"] == edge["cost_per_inference"] == edge["consumed_per_inference"] == 0.0
    assert edge["cost_per_inference_low"] == 0.0
    assert edge["cost_per_inference_high"] == pytest.approx(0.15 * EDGE_PER_LATENCY_SECOND)
    assert edge["cost_per_1k_tokens"] == 0.0
    for row in (local, edge):
        for name in ("cost", "cost_per_inference"):
            assert row[f"{name}_low"] <= row[name] <= row[f"{name}_high"]


def test_box_ranges_are_the_extremes_over_the_corners() -> None:
    a = Bounded(2.0, 1.0, 3.0)
    b = Bounded(-1.0, -2.0, 0.5)
    assert box_range(lambda x, y: x * y, [a, b]) == (-2.0, -6.0, 1.5)
    assert box_range(lambda x: x, [Bounded(1.0, None, 2.0)]) is None
    assert box_range(lambda x, y: x - y, [a, Bounded.exact(1.0)]) == (1.0, 0.0, 2.0)
    assert sum_ranges([(1.0, 0.0, 2.0), (3.0, 2.0, 5.0)]) == (4.0, 2.0, 7.0)
    assert union_level(0.95, 1) == 0.95
    assert union_level(0.95, 4) == pytest.approx(1.0 - 0.05 / 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        union_level(0.95, 0)


def test_token_means_are_per_model_version_where_the_figures_carry_one() -> None:
    requests, latency, _ = hand_measured()
    tokens = measured_means(
        [
            {"route": "cloud", "model": MODEL, **measured_mean(400.0, 5.0, (390, 410, 388, 412))},
            {"route": "cloud", "model": "other", **measured_mean(900.0, 9.0, (880, 920, 870, 930))},
            # Stored without a model label: the route's figure, for every version without one.
            {"route": "cloud", "model": "", **measured_mean(600.0, 6.0, (590, 610, 588, 612))},
            {"route": "edge", "model": "", **measured_mean(200.0, 4.0, (192, 208, 190, 210))},
        ]
    )
    priced = price_cells(COST, requests, latency, tokens, 0.95)
    assert priced.height == requests.height  # one row per requests cell, none doubled
    cloud = _row(priced, "cloud")
    assert cloud["tokens_per_inference"] == 400.0
    assert cloud["cost"] == pytest.approx(1000.0 * 400.0 * CLOUD_PER_1K / 1000.0)
    assert _row(priced, "cloud", "other")["tokens_per_inference"] == 900.0
    assert _row(priced, "edge")["tokens_per_inference"] == 200.0
    assert _row(priced, "local")["tokens_per_inference"] is None
