"""Cost from a warehouse of secure aggregates with known truth and real OpenDP noise:
the estimates are unbiased, the intervals cover, the what-if matches its arithmetic.

40 regions, three routes each (`tests.analytics._cost_fleet`): 120 cost cells per
figure. The box intervals are conservative by construction (each estimate at
1 - alpha/k); the checks allow the binomial tolerance of 5.3 standard deviations below
the nominal rate, so a correct build fails with probability below 1e-6 per check.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime

import duckdb
import polars as pl
import pytest

from analytics import mean_by_labels, requests_by_route
from analytics._cost import cost_breakdown
from analytics._cost_whatif import cost_what_if
from analytics._errors import InvalidQueryError
from tests.analytics._cost_fleet import COST, MODEL, CellTruth, build_cost_fleet
from tests.analytics._fleet import build_fleet
from warehouse import apply_schema, write_envelopes

_REGIONS = 40
Fleet = tuple[duckdb.DuckDBPyConnection, dict[tuple[str, str], CellTruth]]
_LEVEL = 0.9


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    conn = duckdb.connect()
    apply_schema(conn)
    truth = build_cost_fleet(conn, _REGIONS, seed=5)
    yield conn, truth
    conn.close()


@pytest.fixture(scope="module")
def breakdown(fleet: Fleet) -> pl.DataFrame:
    conn, _ = fleet
    return cost_breakdown(conn, COST, level=_LEVEL)


def _tolerance(n: int, level: float) -> float:
    return 5.3 * math.sqrt(n * level * (1.0 - level))


def test_one_row_per_region_and_route_in_one_day(breakdown: pl.DataFrame) -> None:
    assert breakdown.height == 3 * _REGIONS
    assert set(breakdown["route"]) == {"cloud", "edge", "local"}
    assert set(breakdown["charge_period_start"]) == {datetime(2026, 3, 2, tzinfo=UTC)}
    assert set(breakdown["charge_period_end"]) == {datetime(2026, 3, 3, tzinfo=UTC)}
    assert breakdown["priced"].all()
    assert set(breakdown["privacy_model"]) == {"aggregate"}
    assert breakdown["cost_low"].null_count() == 0


@pytest.mark.parametrize("measure", ["cost", "cost_per_inference", "cost_per_1k_tokens"])
def test_intervals_cover_the_true_cost(fleet: Fleet, breakdown: pl.DataFrame, measure: str) -> None:
    _, truth = fleet
    hits = 0
    n = 0
    for row in breakdown.iter_rows(named=True):
        cell = truth[(row["region"], row["route"])]
        value = getattr(cell, measure)(row["route"])
        low, high = row[f"{measure}_low"], row[f"{measure}_high"]
        if low == high:
            # Exact by the model (cloud per 1,000 tokens, local per inference).
            assert row[measure] == pytest.approx(value)
            continue
        n += 1
        hits += low - 1e-12 <= value <= high + 1e-12
    assert n >= 2 * _REGIONS
    assert hits >= n * _LEVEL - _tolerance(n, _LEVEL)


def test_cost_estimates_are_unbiased_at_their_standard_error(
    fleet: Fleet, breakdown: pl.DataFrame
) -> None:
    _, truth = fleet
    z = [
        (row["cost"] - truth[(row["region"], row["route"])].cost(row["route"]))
        / row["cost_std_error"]
        for row in breakdown.iter_rows(named=True)
    ]
    mean = sum(z) / len(z)
    spread = math.sqrt(sum((x - mean) ** 2 for x in z) / (len(z) - 1))
    # The delta method's standard error is the real spread (within sampling error of
    # 120 cells), and the mean error is within 5.3 standard errors of zero.
    assert 0.7 < spread < 1.3
    assert abs(mean) < 5.3 / math.sqrt(len(z))


@pytest.fixture(scope="module")
def small() -> Iterator[duckdb.DuckDBPyConnection]:
    # The what-if takes every estimate at 1 - alpha/k (k = 5 per region): few regions
    # keep the exact intervals at that level quick.
    conn = duckdb.connect()
    apply_schema(conn)
    build_cost_fleet(conn, 3, seed=9)
    yield conn
    conn.close()


def test_the_what_if_moves_cloud_requests_at_the_target_price(
    small: duckdb.DuckDBPyConnection,
) -> None:
    share = 0.3
    out = cost_what_if(small, COST, share=share, target="local", level=_LEVEL)
    assert out.height == 1
    row = out.row(0, named=True)
    assert row["cells_left_out"] == 0
    # Estimates: requests of 9 cells, 3 edge latency means, 3 cloud token means.
    assert row["estimates"] == 15
    breakdown = cost_breakdown(small, COST, level=_LEVEL)
    cloud = breakdown.filter(pl.col("route") == "cloud")
    local_price = COST.local.per_inference
    expected_change = share * sum(
        r["requests"] * (local_price - r["cost_per_inference"]) for r in cloud.iter_rows(named=True)
    )
    assert row["change"] == pytest.approx(expected_change)
    assert row["baseline_cost"] == pytest.approx(breakdown["cost"].sum())
    assert row["projected_cost"] == pytest.approx(row["baseline_cost"] + row["change"])
    assert row["moved_requests"] == pytest.approx(share * float(cloud["requests"].sum()))
    assert row["change_low"] <= row["change"] <= row["change_high"]
    # Cloud costs about 0.27 per inference here, local 0.0005: a credible saving.
    assert row["change_high"] < 0.0
    # Each estimate at 1 - alpha/15: wider than the breakdown's own intervals.
    assert row["baseline_cost_low"] < breakdown["cost_low"].sum()


def test_a_what_if_of_nothing_changes_nothing(small: duckdb.DuckDBPyConnection) -> None:
    row = cost_what_if(small, COST, share=0.0, target="edge", level=_LEVEL).row(0, named=True)
    assert row["change"] == row["change_low"] == row["change_high"] == 0.0
    assert row["projected_cost_low"] == pytest.approx(row["baseline_cost_low"])


@pytest.mark.parametrize(
    ("share", "target", "message"),
    [
        (1.5, "edge", "must be in [0, 1]"),
        (-0.1, "local", "must be in [0, 1]"),
        (0.3, "cloud", "edge or local, not 'cloud'"),
    ],
)
def test_bad_what_if_parameters_are_refused(
    small: duckdb.DuckDBPyConnection, share: float, target: str, message: str
) -> None:
    with pytest.raises(InvalidQueryError) as info:
        cost_what_if(small, COST, share=share, target=target)
    assert message in str(info.value)


def test_local_releases_are_priced_like_secure_aggregates() -> None:
    # Devices' own releases (the pilot policy's model): hourly windows in one day.
    cells = [{"route": r, "model": MODEL} for r in ("cloud", "edge", "local")]
    items, _ = build_fleet(devices=30, windows=3, counter_cells=cells, hist_cells=cells)
    conn = duckdb.connect()
    apply_schema(conn)
    write_envelopes(conn, items)
    cost = COST.model_copy(
        update={
            "requests_signal": "test.requests",
            "latency_signal": "test.latency",
            "tokens_signal": "test.latency",
        }
    )
    frame = cost_breakdown(conn, cost, level=_LEVEL)
    means = mean_by_labels(conn, "test.latency", by=("route", "model"), per_window=False)
    requests = requests_by_route(
        conn, signal="test.requests", by=("route", "model"), per_window=False
    )
    conn.close()
    assert frame.height == 3
    assert set(frame["privacy_model"]) == {"local"}
    assert set(frame["devices"]) == {30}
    edge = frame.filter(pl.col("route") == "edge").row(0, named=True)
    edge_mean = means.filter(pl.col("route") == "edge")["mean"][0]
    edge_requests = requests.filter(pl.col("route") == "edge")["estimate"][0]
    price = COST.edge.per_gpu_second * COST.edge.gpu_seconds_per_latency_second
    assert edge["cost_per_inference"] == pytest.approx(price * edge_mean)
    assert edge["cost"] == pytest.approx(price * edge_mean * edge_requests)
    assert edge["requests"] == pytest.approx(edge_requests)
