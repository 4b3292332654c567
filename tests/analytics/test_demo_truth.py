"""The demo's truth check: fleet truth, per-cell means and the canary verdict, on a
hand-made simulator truth of both privacy models."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from fleetsim._demo import (
    canary_verdict,
    cell_means_truth,
    coverage,
    fleet_truth_of,
    report_run,
)
from fleetsim._pipeline import FleetRun, TruthKey
from fleetsim._simulation import MODEL_CANARY, MODEL_STABLE
from tests.analytics._aggregates import (
    DAY,
    T0,
    AggregateTruth,
    counter_batch,
    histogram_batches,
    insert_batches,
)
from warehouse import connect

W = datetime(2026, 3, 2, tzinfo=UTC)
_LATENCY = "gen_ai.client.operation.duration"
LOCAL = '{"model":"a","route":"local"}'
EDGE = '{"model":"a","route":"edge"}'


def _truth() -> dict[TruthKey, float]:
    return {
        # Aggregate model: a counter's cells and a histogram's count, sum and buckets.
        ("req", W, LOCAL, "counter", None): 30.0,
        ("req", W, EDGE, "counter", None): 12.0,
        ("lat", W, LOCAL, "count", None): 10.0,
        ("lat", W, LOCAL, "sum", None): 12.0,
        ("lat", W, LOCAL, "bucket", 0): 4.0,
        ("lat", W, LOCAL, "bucket", 1): 6.0,
        ("lat", W, EDGE, "count", None): 30.0,
        ("lat", W, EDGE, "sum", None): 9.0,
        # Local model: scalar totals, and per-cell buckets without a count entry.
        ("loc", W, "{}", "total", None): 8.0,
        ("loc", W, "{}", "total_sum", None): 4.0,
        ("loc", W, LOCAL, "bucket", 0): 3.0,
        ("loc", W, LOCAL, "bucket", 1): 5.0,
        ("loc", W, LOCAL, "sum", None): 4.0,
    }


def test_fleet_truth_adds_cells_under_the_aggregate_model() -> None:
    truth = fleet_truth_of(_truth())
    assert truth[("req", "total", W)] == 42.0
    assert truth[("lat", "total", W)] == 40.0
    assert truth[("lat", "mean", W)] == pytest.approx(21.0 / 40.0)
    assert truth[("loc", "total", W)] == 8.0  # the scalar total, not the buckets
    assert truth[("loc", "mean", W)] == 0.5


def test_cell_means_use_counts_or_buckets() -> None:
    means = cell_means_truth(_truth(), "lat", ("model", "route"))
    assert means == {("a", "local"): 1.2, ("a", "edge"): 0.3}
    assert cell_means_truth(_truth(), "loc", ("route",)) == {("local",): 0.5}


def test_coverage_compares_each_aggregate_cell_with_its_truth(tmp_path: Path) -> None:
    run = FleetRun(db=tmp_path / "x", devices=1, windows=1, truth=_truth())
    totals = pl.DataFrame(
        {
            "signal": ["lat", "lat", "lat"],
            "window_start": [W, W, W],
            # Attribute order as stored does not matter.
            "attributes": ['{"route":"local","model":"a"}', LOCAL, EDGE],
            "kind": ["count", "sum", "count"],
            "bucket_index": [None, None, None],
            "ci_low": [8.0, 13.0, 0.0],
            "ci_high": [12.0, 20.0, 40.0],
        }
    )
    assert coverage(run, totals) == (2, 3)


def _means(canary: tuple[float, float], stable: tuple[float, float]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "route": ["local", "local"],
            "model": ["new", "old"],
            "ci_low": [canary[0], stable[0]],
            "ci_high": [canary[1], stable[1]],
        }
    )


def test_canary_verdict() -> None:
    kw = {"stable": "old", "canary": "new"}
    slower = canary_verdict(_means((1.1, 1.3), (0.9, 1.0)), **kw)
    assert "slower on the local route, outside the intervals" in slower
    same = canary_verdict(_means((0.95, 1.3), (0.9, 1.0)), **kw)
    assert "not distinguishable" in same
    unbounded = pl.DataFrame(
        {
            "route": ["local", "local"],
            "model": ["new", "old"],
            "ci_low": [None, 0.9],
            "ci_high": [None, 1.0],
        },
        schema={
            "route": pl.String,
            "model": pl.String,
            "ci_low": pl.Float64,
            "ci_high": pl.Float64,
        },
    )
    assert "not estimable" in canary_verdict(unbounded, **kw)


def test_the_demo_report_checks_means_and_the_canary(tmp_path: Path) -> None:
    cells = [
        {"route": r, "model": m} for r in ("local", "edge") for m in (MODEL_STABLE, MODEL_CANARY)
    ]
    means = [1.3 if c == {"route": "local", "model": MODEL_CANARY} else 1.0 for c in cells]
    db = tmp_path / "w.duckdb"
    conn = connect(db)
    truth = AggregateTruth()
    rng = np.random.default_rng(8)
    insert_batches(
        conn,
        [
            counter_batch("inference.requests", 0, cells, rng, scale=40.0, reports=3000),
            *histogram_batches(
                _LATENCY, 0, cells, rng, mean=means, events=(20_000, 30_000), reports=3000
            ),
        ],
        truth,
    )
    conn.close()
    keyed: dict[TruthKey, float] = {
        (signal, T0 + window * DAY, attrs, kind, bucket): value
        for (signal, window, attrs, kind, bucket), value in truth.values.items()
    }
    run = FleetRun(db=db, devices=3000, windows=1, truth=keyed)
    out = io.StringIO()
    report_run(run, tmp_path / "r.html", Console(file=out, width=200))
    text = out.getvalue()
    assert "Mean latency per (model x route), 95% intervals" in text
    assert (
        f"Canary check: {MODEL_CANARY} is slower on the local route, outside the intervals" in text
    )
    assert "released aggregate-model cells" in text
    assert "inside" in text
    assert (tmp_path / "r.html").exists()
