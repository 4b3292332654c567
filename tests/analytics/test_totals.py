"""Fleet totals on a synthetic warehouse with known truth and real OpenDP noise.

Truth is seeded; OpenDP noise is not. Every tolerance is at least 5.3 standard
deviations of the statistic it bounds (for coverage: of a binomial count of misses
over independent cells), so a correct implementation fails with probability < 1e-6.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import duckdb
import pytest

from analytics import cell_summary, fleet_totals, mean_by_labels, signal_totals
from tests.analytics._fleet import HOUR, T0, FleetTruth, build_fleet
from warehouse import apply_schema, write_envelopes

_COUNTER_CELLS = 1000
_HIST_CELLS = 400


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[duckdb.DuckDBPyConnection, FleetTruth]]:
    conn = duckdb.connect()
    apply_schema(conn)
    items, truth = build_fleet(
        devices=120,
        windows=1,
        counter_cells=[{"cell": f"c{i:04d}"} for i in range(_COUNTER_CELLS)],
        hist_cells=[{"cell": f"h{i:03d}"} for i in range(_HIST_CELLS)],
        count_scale=8.0,
        sum_scale=20.0,
    )
    write_envelopes(conn, items)
    yield conn, truth
    conn.close()


@pytest.fixture(scope="module")
def few_devices() -> Iterator[tuple[duckdb.DuckDBPyConnection, FleetTruth]]:
    conn = duckdb.connect()
    apply_schema(conn)
    items, truth = build_fleet(
        devices=3, windows=1, counter_cells=[{"cell": f"c{i:04d}"} for i in range(1000)]
    )
    write_envelopes(conn, items)
    yield conn, truth
    conn.close()


def _truth_of(truth: FleetTruth, attributes: str) -> int:
    return truth.counters[(0, attributes)]


def test_counter_totals_are_unbiased_with_honest_std_errors(fleet: tuple) -> None:
    conn, truth = fleet
    df = fleet_totals(conn, signal="test.requests")
    assert df.height == _COUNTER_CELLS
    assert set(df["interval"]) == {"normal"}
    assert set(df["devices"]) == {120}
    z = [
        (r["estimate"] - _truth_of(truth, r["attributes"])) / r["std_error"] for r in df.to_dicts()
    ]
    mean_z = sum(z) / len(z)
    var_z = sum((x - mean_z) ** 2 for x in z) / (len(z) - 1)
    assert abs(mean_z) < 5.3 / math.sqrt(len(z))  # unbiased
    assert 0.75 < var_z < 1.25  # std_error is the real spread


def test_counter_intervals_cover_the_truth_at_the_stated_rate(fleet: tuple) -> None:
    conn, truth = fleet
    for level in (0.95, 0.8):
        df = fleet_totals(conn, signal="test.requests", level=level)
        hits = sum(
            r["ci_low"] <= _truth_of(truth, r["attributes"]) <= r["ci_high"] for r in df.to_dicts()
        )
        n, miss = df.height, 1 - level
        tol = 5.3 * math.sqrt(n * level * miss)
        assert abs(hits - n * level) < tol, (level, hits / n)


def test_mean_latency_intervals_cover_the_true_mean(fleet: tuple) -> None:
    conn, truth = fleet
    df = mean_by_labels(conn, "test.latency", by=("cell",), per_window=True)
    assert df.height == _HIST_CELLS
    hits = 0
    z = []
    for r in df.to_dicts():
        n, s = truth.hist[(0, json.dumps({"cell": r["cell"]}, separators=(",", ":")))]
        assert r["ci_low"] is not None
        assert r["ci_high"] is not None
        hits += r["ci_low"] <= s / n <= r["ci_high"]
        z.append((r["mean"] - s / n) / r["std_error"])
    tol = 5.3 * math.sqrt(_HIST_CELLS * 0.95 * 0.05)
    assert abs(hits - 0.95 * _HIST_CELLS) < tol, hits / _HIST_CELLS
    assert abs(sum(z) / len(z)) < 5.3 / math.sqrt(len(z)) + 0.05  # ratio bias is O(1/C)


def test_histogram_event_counts_add_up_over_buckets(fleet: tuple) -> None:
    conn, _truth = fleet
    latency = fleet_totals(conn, signal="test.latency")
    per_bucket = latency.filter(latency["kind"] == "bucket")
    assert set(per_bucket["bucket_index"]) == {0, 1}
    assert per_bucket.filter(per_bucket["bucket_index"] == 1)["bucket_upper"].is_null().all()
    summary = cell_summary(conn, signal="test.latency")
    counts = summary.filter(summary["measure"] == "count")
    assert counts.height == _HIST_CELLS
    row = counts.row(0, named=True)
    bucket_sum = per_bucket.filter(per_bucket["attributes"] == row["attributes"])["estimate"].sum()
    assert row["estimate"] == pytest.approx(bucket_sum)


def test_few_devices_get_a_conservative_bound(few_devices: tuple) -> None:
    conn, truth = few_devices
    df = fleet_totals(conn, signal="test.requests")
    assert set(df["interval"]) == {"bound"}
    assert set(df["devices"]) == {3}
    hits = sum(
        r["ci_low"] <= _truth_of(truth, r["attributes"]) <= r["ci_high"] for r in df.to_dicts()
    )
    # Conservative: at least the stated rate (tolerance 5.3 sd of a binomial at 0.95).
    assert hits >= 0.95 * df.height - 5.3 * math.sqrt(df.height * 0.95 * 0.05)
    normal_half = 1.96 * df["std_error"][0]
    assert df["ci_high"][0] - df["estimate"][0] > normal_half


def test_rollup_adds_cells_and_their_variances(fleet: tuple) -> None:
    conn, _ = fleet
    cells = fleet_totals(conn, signal="test.requests")
    total = signal_totals(conn, "test.requests", by=(), per_window=False)
    assert total.height == 1
    assert total["estimate"][0] == pytest.approx(cells["estimate"].sum())
    assert total["std_error"][0] == pytest.approx(math.sqrt((cells["std_error"] ** 2).sum()))


def test_time_filters_select_windows(fleet: tuple) -> None:
    conn, _ = fleet
    assert fleet_totals(conn, since=T0 + HOUR).is_empty()
    assert not fleet_totals(conn, since=T0, until=T0 + HOUR).is_empty()
    assert fleet_totals(conn, until=T0).is_empty()
