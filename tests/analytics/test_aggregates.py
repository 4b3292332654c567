"""Fleet figures from secure aggregates (`fleet_aggregates`), alone and next to local ones.

The warehouses hold synthetic batches whose noise is drawn from the declared law with
OpenDP (two discrete Laplace draws per entry, times the resolution; see _aggregates.py).
Truth is seeded, the noise is not: coverage is checked against the nominal rate with a
binomial tolerance of 5.3 standard deviations, so a correct build fails with
probability below 1e-6 per check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from analytics import (
    InvalidQueryError,
    cell_summary,
    fleet_mean,
    fleet_totals,
    grand_totals,
    histogram_buckets,
    mean_by_labels,
    signal_totals,
)
from analytics._noise import noise_variance
from schemas import Mechanism
from tests.analytics._aggregates import (
    AggregateTruth,
    Batch,
    Entry,
    attrs_json,
    counter_batch,
    histogram_batches,
    insert_batches,
)
from tests.analytics._fleet import build_fleet
from warehouse import apply_schema, connect, write_envelopes

_SMALL = 1000  # counter cells at scale 40: the lattice path
_LARGE = 600  # counter cells at scale 2e5: the continuous path
_HIST = 250  # histogram cells
_REPORTS = 700


def _tolerance(n: int, level: float) -> float:
    return 5.3 * math.sqrt(n * level * (1.0 - level))


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[duckdb.DuckDBPyConnection, AggregateTruth]]:
    conn = duckdb.connect()
    apply_schema(conn)
    rng = np.random.default_rng(11)
    truth = AggregateTruth()
    batches = [
        counter_batch(
            "agg.requests",
            0,
            [{"cell": f"c{i:04d}"} for i in range(_SMALL)],
            rng,
            scale=40.0,
            reports=_REPORTS,
        ),
        counter_batch(
            "agg.big",
            0,
            [{"cell": f"c{i:04d}"} for i in range(_LARGE)],
            rng,
            scale=2e5,
            high=2_000_000,
            reports=_REPORTS,
        ),
        *histogram_batches(
            "agg.latency",
            0,
            [{"cell": f"h{i:03d}"} for i in range(_HIST)],
            rng,
            reports=_REPORTS,
        ),
    ]
    insert_batches(conn, batches, truth)
    yield conn, truth
    conn.close()


def _hits(df: pl.DataFrame, truth: AggregateTruth, signal: str, kind: str) -> int:
    return sum(
        r["ci_low"] <= truth.of(signal, 0, r["attributes"], kind, r["bucket_index"]) <= r["ci_high"]
        for r in df.filter(pl.col("kind") == kind).to_dicts()
    )


def test_aggregate_cells_carry_their_noise_model_and_reports(fleet: tuple) -> None:
    conn, _ = fleet
    df = fleet_totals(conn, signal="agg.requests")
    assert df.height == _SMALL
    assert set(df["interval"]) == {"exact"}
    assert set(df["privacy_model"]) == {"aggregate"}
    assert set(df["mechanism"]) == {"discrete_laplace"}
    assert set(df["devices"]) == {_REPORTS}
    assert df["std_error"][0] == pytest.approx(
        math.sqrt(2 * noise_variance(Mechanism.DISCRETE_LAPLACE, 40.0))
    )
    sums = fleet_totals(conn, signal="agg.latency").filter(pl.col("kind") == "sum")
    # Two draws at 5000 units of 0.01 s: variance 2 x 0.01² x var(5000).
    assert sums["std_error"][0] == pytest.approx(
        0.01 * math.sqrt(2 * noise_variance(Mechanism.DISCRETE_LAPLACE, 5000.0))
    )


@pytest.mark.parametrize(("signal", "cells"), [("agg.requests", _SMALL), ("agg.big", _LARGE)])
@pytest.mark.parametrize("level", [0.95, 0.8])
def test_counter_cells_cover_at_the_nominal_rate(
    fleet: tuple, signal: str, cells: int, level: float
) -> None:
    conn, truth = fleet
    df = fleet_totals(conn, signal=signal, level=level)
    hits = _hits(df, truth, signal, "counter")
    assert abs(hits - cells * level) < _tolerance(cells, level), hits / cells


@pytest.mark.parametrize("kind", ["bucket", "count", "sum"])
def test_histogram_entries_cover_at_the_nominal_rate(fleet: tuple, kind: str) -> None:
    conn, truth = fleet
    df = fleet_totals(conn, signal="agg.latency")
    n = df.filter(pl.col("kind") == kind).height
    assert n == (_HIST * 4 if kind == "bucket" else _HIST)
    hits = _hits(df, truth, "agg.latency", kind)
    assert abs(hits - n * 0.95) < _tolerance(n, 0.95), hits / n


def test_means_use_the_count_entry_and_cover_the_true_mean(fleet: tuple) -> None:
    conn, truth = fleet
    means = mean_by_labels(conn, "agg.latency", by=("cell",))
    assert means.height == _HIST
    assert set(means["interval"]) == {"exact"}
    totals = fleet_totals(conn, signal="agg.latency")
    counts = {
        json.loads(r["attributes"])["cell"]: r["estimate"]
        for r in totals.filter(pl.col("kind") == "count").to_dicts()
    }
    hits = 0
    for r in means.to_dicts():
        # The denominator is the cell's count entry (two draws), not its buckets added.
        assert r["count_estimate"] == counts[r["cell"]]
        assert r["ci_low"] is not None
        assert r["ci_high"] is not None
        assert r["ci_low"] < r["mean"] < r["ci_high"]
        cell = attrs_json({"cell": r["cell"]})
        true_mean = truth.of("agg.latency", 0, cell, "sum", None) / truth.of(
            "agg.latency", 0, cell, "count", None
        )
        hits += r["ci_low"] <= true_mean <= r["ci_high"]
    assert abs(hits - 0.95 * _HIST) < _tolerance(_HIST, 0.95), hits / _HIST


def test_fleet_total_and_mean_add_the_cells(fleet: tuple) -> None:
    conn, truth = fleet
    cells = fleet_totals(conn, signal="agg.requests")
    total = grand_totals(conn, "agg.requests")
    assert total.height == 1
    assert total["estimate"][0] == pytest.approx(cells["estimate"].sum())
    assert total["std_error"][0] == pytest.approx(math.sqrt((cells["std_error"] ** 2).sum()))
    assert total["devices"][0] == _REPORTS
    true_total = sum(v for k, v in truth.values.items() if k[0] == "agg.requests")
    # 2,000 draws: normal. At 99.99% a correct interval misses once in 10,000 runs.
    wide = grand_totals(conn, "agg.requests", level=0.9999)
    assert wide["ci_low"][0] < true_total < wide["ci_high"][0]
    latency = fleet_totals(conn, signal="agg.latency")
    count = grand_totals(conn, "agg.latency")
    assert count["estimate"][0] == pytest.approx(
        latency.filter(pl.col("kind") == "count")["estimate"].sum()
    )
    mean = fleet_mean(conn, "agg.latency")
    sums = latency.filter(pl.col("kind") == "sum")["estimate"].sum()
    assert mean["mean"][0] == pytest.approx(sums / count["estimate"][0])
    assert mean["ci_low"][0] < mean["mean"][0] < mean["ci_high"][0]


def test_summary_counts_and_bucket_rollups(fleet: tuple) -> None:
    conn, _ = fleet
    summary = cell_summary(conn, signal="agg.latency")
    assert set(summary["measure"]) == {"count", "mean"}
    assert set(summary["interval"]) == {"exact"}
    buckets = histogram_buckets(conn, "agg.latency", by=())
    assert buckets["bucket_index"].to_list() == [0, 1, 2, 3]
    assert buckets["bucket_upper"].to_list()[:3] == [0.5, 1.0, 2.0]
    assert set(buckets["interval"]) == {"normal"}  # 2 x 250 draws per bucket
    by_kind = signal_totals(conn, "agg.latency", kind="count", by=(), per_window=False)
    assert by_kind["estimate"][0] == pytest.approx(
        summary.filter(pl.col("measure") == "count")["estimate"].sum()
    )


def test_a_label_named_like_a_result_column_is_refused(fleet: tuple) -> None:
    conn, _ = fleet
    with pytest.raises(InvalidQueryError, match="result column"):
        mean_by_labels(conn, "agg.latency", by=("mean",))


@pytest.fixture(scope="module")
def mixed() -> Iterator[tuple[duckdb.DuckDBPyConnection, dict[str, float]]]:
    """test.requests/test.latency under the local model (2025) and the aggregate (2026)."""
    conn = duckdb.connect()
    apply_schema(conn)
    cells = [{"cell": f"c{i:02d}"} for i in range(60)]
    items, local = build_fleet(devices=40, windows=1, counter_cells=cells, hist_cells=cells[:20])
    write_envelopes(conn, items)
    truth = AggregateTruth()
    rng = np.random.default_rng(5)
    insert_batches(
        conn,
        [
            counter_batch("test.requests", 0, cells, rng, scale=40.0, high=800, reports=40),
            *histogram_batches(
                "test.latency", 0, cells[:20], rng, bounds=(2.0,), events=(300, 600), reports=40
            ),
        ],
        truth,
    )
    combined = {}
    for c in cells:
        key = attrs_json(c)
        combined[key] = local.counters[(0, key)] + truth.of(
            "test.requests", 0, key, "counter", None
        )
    yield conn, combined
    conn.close()


def test_mixed_models_roll_up_with_a_guaranteed_interval(mixed: tuple) -> None:
    conn, combined = mixed
    per_window = fleet_totals(conn, signal="test.requests")
    assert set(per_window["privacy_model"]) == {"local", "aggregate"}
    assert set(per_window.filter(pl.col("privacy_model") == "local")["devices"]) == {40}
    rolled = signal_totals(conn, "test.requests", by=("cell",), per_window=False)
    assert rolled.height == 60
    assert set(rolled["privacy_model"]) == {"mixed"}
    assert set(rolled["mechanism"]) == {"discrete_laplace"}
    assert set(rolled["devices"]) == {80}  # 40 devices plus a batch of 40 reports
    # Few draws, two laws: the exact quantile (with the coupling slack) beats the bound.
    assert set(rolled["interval"]) == {"exact"}
    hits = sum(
        r["ci_low"] <= combined[attrs_json({"cell": r["cell"]})] <= r["ci_high"]
        for r in rolled.to_dicts()
    )
    assert hits >= 0.95 * 60 - _tolerance(60, 0.95)
    means = mean_by_labels(conn, "test.latency", by=(), per_window=False)
    assert means["privacy_model"][0] == "mixed"
    assert means["interval"][0] in ("exact", "normal")
    assert means["ci_low"][0] < means["mean"][0] < means["ci_high"][0]
    total = grand_totals(conn, "test.requests", per_window=False)
    # Locally only scalar totals count (build_fleet releases none); the aggregate cells do.
    assert total["privacy_model"][0] == "aggregate"


def test_a_warehouse_without_the_aggregates_table_still_answers(tmp_path) -> None:
    conn = duckdb.connect()
    apply_schema(conn)
    conn.execute("DROP TABLE fleet_aggregates")
    items, _ = build_fleet(devices=5, windows=1, counter_cells=[{"cell": "a"}])
    write_envelopes(conn, items)
    df = fleet_totals(conn)
    assert df.height == 1
    assert df["privacy_model"][0] == "local"
    assert grand_totals(conn, "test.requests").is_empty()


def test_labels_named_like_internal_columns_group_correctly() -> None:
    # `model` (a model version) and `scale` are plausible labels, and also names of the
    # warehouse's own columns: grouping by them must not read the wrong one.
    conn = duckdb.connect()
    apply_schema(conn)
    cells = [{"model": m, "scale": s} for m in ("v1", "v2") for s in ("s", "l")]
    rng = np.random.default_rng(2)
    insert_batches(
        conn,
        [
            counter_batch("x.requests", 0, cells, rng, scale=40.0, reports=321),
            *histogram_batches("x.latency", 0, cells, rng, reports=321),
        ],
        AggregateTruth(),
    )
    means = mean_by_labels(conn, "x.latency", by=("model", "scale"))
    assert sorted(zip(means["model"], means["scale"], strict=True)) == [
        ("v1", "l"),
        ("v1", "s"),
        ("v2", "l"),
        ("v2", "s"),
    ]
    assert set(means["devices"]) == {321}
    assert set(means["interval"]) == {"exact"}
    totals = signal_totals(conn, "x.requests", by=("model",))
    assert sorted(totals["model"]) == ["v1", "v2"]
    assert set(totals["devices"]) == {321}


def test_a_signals_total_tasks_give_its_fleet_total_and_mean(tmp_path: Path) -> None:
    """Where a signal has `total` / `total_sum` tasks, grand totals and fleet means read
    them (two draws each), not its scaled-down cells."""
    conn = connect(tmp_path / "totals.duckdb")
    truth = AggregateTruth()
    # Noise sd about 8 units per entry: cells far larger, so the means are near 0.5.
    cells = [Entry("count", {"route": r}, 5_000) for r in ("a", "b")]
    sums = [Entry("sum", {"route": r}, 2_500) for r in ("a", "b")]
    insert_batches(
        conn,
        [
            Batch("lat", "counts", 0, cells, scale=4.0),
            Batch("lat", "sums", 0, sums, scale=4.0),
            Batch("lat", "total_events", 0, [Entry("total", {}, 20_000)], scale=4.0),
            Batch("lat", "total_sum", 0, [Entry("total_sum", {}, 60_000)], scale=4.0),
        ],
        truth,
    )
    total = grand_totals(conn, "lat")
    assert total.height == 1
    assert total["estimate"][0] == pytest.approx(20_000, abs=200)  # not the cells' 10,000
    mean = fleet_mean(conn, "lat")
    assert mean["mean"][0] == pytest.approx(3.0, rel=0.05)  # not the cells' 0.5
    # Per-cell means still come from the cells.
    by_route = mean_by_labels(conn, "lat", by=("route",), per_window=False)
    assert by_route["mean"].to_list() == pytest.approx([0.5, 0.5], abs=0.05)
    conn.close()
