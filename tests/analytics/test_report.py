"""The report over secure aggregates next to local releases: JSON, terminal, HTML."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest
from rich.console import Console

from analytics import build_report, render_html, render_json, render_table
from analytics._report import FleetReport
from tests.analytics._aggregates import (
    AggregateTruth,
    counter_batch,
    histogram_batches,
    insert_batches,
)
from tests.analytics._fleet import build_fleet
from warehouse import apply_schema, write_envelopes

_CELLS = [{"route": r, "model": m} for r in ("local", "edge", "cloud") for m in ("v1.0", "v1.1")]
# The canary (v1.1) is 30% slower on the local route.
_MEANS = [1.3 if c == {"route": "local", "model": "v1.1"} else 1.0 for c in _CELLS]


@pytest.fixture(scope="module")
def report() -> Iterator[FleetReport]:
    conn = duckdb.connect()
    apply_schema(conn)
    rng = np.random.default_rng(3)
    batches = []
    for window in range(2):
        batches.append(
            counter_batch("inference.requests", window, _CELLS, rng, scale=40.0, reports=3000)
        )
        batches += histogram_batches(
            "gen_ai.client.operation.duration",
            window,
            _CELLS,
            rng,
            mean=_MEANS,
            events=(20_000, 30_000),
            reports=3000,
        )
    insert_batches(conn, batches, AggregateTruth())
    # A local-model signal in the same warehouse (the content tier keeps that model).
    items, _ = build_fleet(devices=30, windows=1, counter_cells=[{"cell": "a"}, {"cell": "b"}])
    write_envelopes(conn, items)
    yield build_report(conn, source="test")
    conn.close()


def test_json_records_say_model_and_mechanism(report: FleetReport) -> None:
    doc = json.loads(render_json(report))
    records = doc["cells"]
    keys = {
        "signal",
        "kind",
        "window_start",
        "window_end",
        "attributes",
        "bucket_index",
        "bucket_upper",
        "estimate",
        "std_error",
        "ci_low",
        "ci_high",
        "interval",
        "devices",
        "epsilon",
        "rho",
        "privacy_model",
        "mechanism",
    }
    assert all(set(r) == keys for r in records)
    aggregate = [r for r in records if r["privacy_model"] == "aggregate"]
    assert {r["kind"] for r in aggregate} == {"counter", "bucket", "count", "sum"}
    assert {r["devices"] for r in aggregate} == {3000}
    assert {r["interval"] for r in aggregate} == {"exact"}
    assert {r["privacy_model"] for r in records if r["signal"] == "test.requests"} == {"local"}


def test_fleet_totals_cover_aggregate_signals(report: FleetReport) -> None:
    fleet = report.fleet
    latency = fleet.filter(fleet["signal"] == "gen_ai.client.operation.duration")
    assert sorted(set(latency["measure"])) == ["mean", "total"]
    assert latency.height == 4  # two windows x (total, mean)
    assert set(latency["privacy_model"]) == {"aggregate"}
    assert (latency["ci_low"] < latency["estimate"]).all()
    assert "test.requests" not in set(fleet["signal"])  # local, without scalar totals


def test_canary_mean_is_outside_the_stable_interval(report: FleetReport) -> None:
    view = next(v for v in report.views if v.signal == "gen_ai.client.operation.duration")
    cells = view.cells
    canary = cells.filter((cells["route"] == "local") & (cells["model"] == "v1.1")).row(
        0, named=True
    )
    stable = cells.filter((cells["route"] == "local") & (cells["model"] == "v1.0")).row(
        0, named=True
    )
    assert canary["ci_low"] > stable["ci_high"]
    assert set(cells["interval"]) == {"exact"}
    assert set(cells["devices"]) == {3000}
    assert "aggregate model" in view.origin
    assert "3,000 reports (devices) per batch" in view.origin


def test_html_has_the_plots_and_says_where_figures_come_from(
    report: FleetReport, tmp_path: Path
) -> None:
    page = render_html(report, tmp_path / "r.html").read_text()
    assert page.index("Fleet totals per window") < page.index(
        "gen_ai.client.operation.duration</h2>"
    )
    assert "Mean (s) per (model x route)" in page
    assert "Distribution per cell" in page
    assert "Where the figures come from" in page
    assert "aggregate model (Prio3 secure aggregation, central DP)" in page
    assert "local model (each device adds its own noise)" in page
    # means per (model x route), buckets per cell, per-window means and totals, fleet
    assert page.count("<svg") >= 6
    assert "http" not in page.split("<svg")[0].lower()  # self-contained


def test_terminal_table_captions_name_the_model(report: FleetReport) -> None:
    out = io.StringIO()
    render_table(report, Console(file=out, width=200))
    text = out.getvalue()
    assert "reports (devices) per batch" in text
    assert "exact = the noise's own law" in text
    assert "route=local" in text
