"""The what-if's arithmetic and its intervals, on measured use given by hand.

Coverage is checked by simulation: estimates drawn around a known truth with normal
noise, each interval exact at the level the what-if asks of it (1 - alpha/k); the
projected change must cover the true change at least at the nominal rate (the box is
conservative, so it covers more), within 5.3 binomial standard deviations.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import polars as pl
import pytest

from analytics._cost import price_cells
from analytics._cost_box import union_level
from analytics._cost_whatif import WHAT_IF_SCHEMA, project_move
from analytics._errors import InvalidQueryError
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


def _priced(level: float = 0.95) -> pl.DataFrame:
    return price_cells(COST, *hand_measured(), level)


def test_moving_cloud_to_local_replaces_its_cost_per_inference() -> None:
    out = project_move(COST, _priced(), 0.25, "local", 0.95, 5)
    assert dict(out.schema) == WHAT_IF_SCHEMA
    row = out.row(0, named=True)
    cloud_cpi = CLOUD_PER_1K * 300.0 / 1000.0
    assert row["moved_requests"] == pytest.approx(0.25 * 1000.0)
    assert row["change"] == pytest.approx(0.25 * 1000.0 * (LOCAL_PER_INFERENCE - cloud_cpi))
    baseline = 1000.0 * cloud_cpi + 2000.0 * 0.4 * EDGE_PER_LATENCY_SECOND
    baseline += 3000.0 * LOCAL_PER_INFERENCE
    assert row["baseline_cost"] == pytest.approx(baseline)
    assert row["projected_cost"] == pytest.approx(baseline + row["change"])
    # The unpriced cells (cloud/other, other route) are left out, and counted.
    assert row["cells_left_out"] == 0
    assert row["target"] == "local"
    assert row["estimates"] == 5


def test_moving_cloud_to_edge_prices_it_at_the_edge_latency() -> None:
    row = project_move(COST, _priced(), 1.0, "edge", 0.95, 5).row(0, named=True)
    cloud_cpi = CLOUD_PER_1K * 300.0 / 1000.0
    edge_cpi = EDGE_PER_LATENCY_SECOND * 0.4
    assert row["change"] == pytest.approx(1000.0 * (edge_cpi - cloud_cpi))
    # The box: requests in [960, 1040] and the two means at their index-0 bounds.
    lows = [
        n * (EDGE_PER_LATENCY_SECOND * v - CLOUD_PER_1K * u / 1000)
        for n in (960.0, 1040.0)
        for u in (290.0, 310.0)
        for v in (0.38, 0.42)
    ]
    assert row["change_low"] == pytest.approx(min(lows))
    assert row["change_high"] == pytest.approx(max(lows))


def test_a_cloud_cell_without_its_target_stays_and_is_counted() -> None:
    requests, latency, tokens = hand_measured()
    # No edge latency for the model: its cloud traffic cannot be priced on the edge.
    latency = latency.filter(pl.col("route") != "edge")
    priced = price_cells(COST, requests, latency, tokens, 0.95)
    row = project_move(COST, priced, 0.5, "edge", 0.95, 5).row(0, named=True)
    assert row["change"] == 0.0
    assert row["moved_requests"] == 0.0
    # The edge cell (no mean) and the cloud cell (no target) are both left out.
    assert row["cells_left_out"] == 2


def test_no_cost_of_the_what_if_is_negative() -> None:
    """A period whose requests' estimate is below zero: its baseline and projection are
    zero, as their lower bounds are, not negative."""
    requests = measured_requests([("local", MODEL, -40.0, 900.0, (-100.0, 20.0, -110.0, 30.0))])
    tokens = measured_means(
        [{"route": "local", **measured_mean(250.0, 5.0, (240.0, 260.0, 238.0, 262.0))}]
    )
    latency = measured_means(
        [{"route": "edge", "model": MODEL, **measured_mean(0.4, 0.01, (0.38, 0.42, 0.37, 0.43))}]
    )
    priced = price_cells(COST, requests, latency, tokens, 0.95)
    row = project_move(COST, priced, 0.5, "edge", 0.95, 1).row(0, named=True)
    for name in ("baseline_cost", "projected_cost", "moved_requests"):
        assert row[f"{name}_low"] == row[name] == 0.0
        assert row[name] <= row[f"{name}_high"]


@pytest.mark.parametrize(("share", "target"), [(1.01, "edge"), (0.5, "cloud"), (-1.0, "local")])
def test_bad_parameters_are_refused(share: float, target: str) -> None:
    with pytest.raises(InvalidQueryError):
        project_move(COST, _priced(), share, target, 0.95, 5)


def _simulated(rng: np.random.Generator, z: float) -> pl.DataFrame:
    """One draw of measured use around the truth of `hand_measured`, with normal noise of
    known standard deviation and intervals exact at z."""

    def bounds(est: float, sd: float) -> tuple[float, float, float, float]:
        return (est - z * sd, est + z * sd, est - z * sd, est + z * sd)

    n_sd, lat_sd, tok_sd = 40.0, 0.02, 8.0
    n = {
        r: t + rng.normal(0.0, n_sd)
        for r, t in (("cloud", 1000.0), ("edge", 2000.0), ("local", 3000.0))
    }
    lat = 0.4 + rng.normal(0.0, lat_sd)
    tok = 300.0 + rng.normal(0.0, tok_sd)
    requests = measured_requests([(r, MODEL, v, n_sd**2, bounds(v, n_sd)) for r, v in n.items()])
    latency = measured_means(
        [{"route": "edge", "model": MODEL, **measured_mean(lat, lat_sd, bounds(lat, lat_sd))}]
    )
    tokens = measured_means(
        [
            {"route": "cloud", **measured_mean(tok, tok_sd, bounds(tok, tok_sd))},
            {"route": "local", **measured_mean(250.0, 5.0, bounds(250.0, 5.0))},
            {"route": "edge", **measured_mean(200.0, 4.0, bounds(200.0, 4.0))},
        ]
    )
    return price_cells(COST, requests, latency, tokens, 0.95)


def test_the_change_interval_covers_the_true_change() -> None:
    level, share, runs = 0.9, 0.4, 400
    # Estimates: 3 requests, the edge latency, the cloud tokens.
    k = 5
    z = NormalDist().inv_cdf(0.5 + union_level(level, k) / 2.0)
    true_change = share * 1000.0 * (EDGE_PER_LATENCY_SECOND * 0.4 - CLOUD_PER_1K * 0.3)
    true_baseline = (
        1000.0 * CLOUD_PER_1K * 0.3
        + 2000.0 * EDGE_PER_LATENCY_SECOND * 0.4
        + 3000.0 * LOCAL_PER_INFERENCE
    )
    rng = np.random.default_rng(3)
    hits = {"change": 0, "projected_cost": 0, "baseline_cost": 0}
    truth = {
        "change": true_change,
        "projected_cost": true_baseline + true_change,
        "baseline_cost": true_baseline,
    }
    for _ in range(runs):
        row = project_move(COST, _simulated(rng, z), share, "edge", level, k).row(0, named=True)
        for name in hits:
            hits[name] += row[f"{name}_low"] <= truth[name] <= row[f"{name}_high"]
    tolerance = 5.3 * math.sqrt(runs * level * (1.0 - level))
    for name, count in hits.items():
        assert count >= runs * level - tolerance, name
