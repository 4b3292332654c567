"""Canary verdicts on constructed warehouses: secure aggregates written as the collector
writes them (real OpenDP noise), and devices' local releases."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from analytics import InvalidQueryError, canary_verdict
from analytics._canary_plot import canary_plot
from analytics._canary_verdict import MetricStatus, Verdict
from policies import CanaryMetric, CanaryPolicy
from tests.analytics._aggregates import (
    AggregateTruth,
    Batch,
    Entry,
    histogram_batches,
    insert_batches,
)
from tests.analytics._fleet import build_fleet
from warehouse import connect, write_envelopes

OLD, NEW = "m@1.9", "m@1.10"  # natural order: 1.10 is the newer
ROUTES = ("local", "edge")
LATENCY = "lat"
RULES = CanaryPolicy(
    metrics={
        "latency": CanaryMetric(
            signal=LATENCY, effect="ratio", max_increase=0.10, max_interval_width=0.2
        ),
        "error_rate": CanaryMetric(
            signal="errors",
            effect="difference",
            per_request="requests",
            max_increase=0.01,
            max_interval_width=0.02,
        ),
    }
)


def _cells() -> list[dict[str, str]]:
    return [{"route": r, "model": m} for r in ROUTES for m in (OLD, NEW)]


def _write(
    conn: duckdb.DuckDBPyConnection,
    *,
    slow: float = 1.0,
    errors_new: int = 100,
    seed: int = 3,
    errors_labelled: bool = True,
) -> None:
    """One window: latency means 1.0 (the canary's local route `slow` times that), 20,000
    events per cell, 10,000 requests per cell with 100 errors (the canary's local:
    `errors_new`). Noise scales small enough that every interval is a few % wide."""
    rng = np.random.default_rng(seed)
    cells = _cells()
    means = [slow if (c["route"], c["model"]) == ("local", NEW) else 1.0 for c in cells]
    batches = histogram_batches(
        LATENCY,
        0,
        cells,
        rng,
        mean=means,
        events=(20_000, 20_001),
        count_scale=20.0,
        sum_scale=2000.0,
        resolution=0.01,
    )
    batches.append(
        Batch("requests", "cells", 0, [Entry("counter", c, 10_000) for c in cells], 20.0)
    )
    if errors_labelled:
        errs = [
            Entry("counter", c, errors_new if (c["route"], c["model"]) == ("local", NEW) else 100)
            for c in cells
        ]
    else:
        errs = [Entry("counter", {"route": r}, 200) for r in ROUTES]
    batches.append(Batch("errors", "cells", 0, errs, 5.0))
    insert_batches(conn, batches, AggregateTruth())


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = connect(tmp_path / "w.duckdb")
    try:
        yield c
    finally:
        c.close()


def _statuses(result_frame: pl.DataFrame) -> dict[tuple[str, str], str]:
    return {(r["route"], r["metric"]): r["status"] for r in result_frame.to_dicts()}


def test_a_slower_canary_is_rolled_back_on_its_route(conn: duckdb.DuckDBPyConnection) -> None:
    _write(conn, slow=1.3)
    result = canary_verdict(conn, RULES)
    v = result.verdict
    assert (v.canary, v.baseline) == (NEW, OLD)  # the newest version is the canary
    assert v.verdict is Verdict.ROLLBACK
    by_route = {r.route: r for r in v.routes}
    assert by_route["local"].verdict is Verdict.ROLLBACK
    assert by_route["edge"].verdict is Verdict.PROMOTE
    latency = next(m for m in by_route["local"].metrics if m.metric == "latency")
    assert latency.status is MetricStatus.REGRESSION
    assert latency.ci_low is not None
    assert latency.ci_high is not None
    assert latency.ci_low > 0.10
    assert latency.estimate is not None
    # The cells' events are sampled (20,000 lognormal latencies each: about 0.5% on the
    # ratio) and noised (about 0.3%): 0.03 is more than five standard errors.
    assert abs(latency.estimate - 0.30) < 0.03
    assert latency.interval == "exact"
    assert latency.canary.events == pytest.approx(20_000, rel=0.01)
    assert any(reason.startswith("local: latency regression") for reason in v.reasons)
    # The frame holds the same evidence, one row per route and metric.
    frame = result.evidence
    assert frame.height == 4
    assert set(frame["verdict"]) == {"rollback"}
    row = frame.filter(pl.col("route") == "local", pl.col("metric") == "latency").row(0, named=True)
    assert row["estimate"] == pytest.approx(latency.estimate)
    assert row["route_verdict"] == "rollback"


def test_more_failures_roll_back_through_the_error_rate(conn: duckdb.DuckDBPyConnection) -> None:
    _write(conn, errors_new=500)  # 5% against 1%, latency unchanged
    result = canary_verdict(conn, RULES)
    statuses = _statuses(result.evidence)
    assert statuses[("local", "error_rate")] == "regression"
    assert statuses[("local", "latency")] == "pass"
    local = result.evidence.filter(pl.col("route") == "local", pl.col("metric") == "error_rate")
    assert local["estimate"][0] == pytest.approx(0.04, abs=0.005)
    assert local["canary_value"][0] == pytest.approx(0.05, abs=0.005)
    assert result.verdict.verdict is Verdict.ROLLBACK


def test_a_canary_without_regression_is_promoted(conn: duckdb.DuckDBPyConnection) -> None:
    _write(conn)
    result = canary_verdict(conn, RULES)
    assert result.verdict.verdict is Verdict.PROMOTE
    assert set(result.evidence["status"]) == {"pass"}
    assert not result.verdict.reasons


def test_too_little_evidence_holds(conn: duckdb.DuckDBPyConnection) -> None:
    _write(conn)
    strict = RULES.model_copy(
        update={
            "metrics": {
                "latency": RULES.metrics["latency"].model_copy(update={"min_events": 50_000})
            }
        }
    )
    result = canary_verdict(conn, strict)
    assert result.verdict.verdict is Verdict.HOLD
    assert set(result.evidence["status"]) == {"insufficient"}
    assert "below the minimum 50,000" in result.evidence["reason"][0]
    narrow = RULES.metrics["latency"].model_copy(update={"max_interval_width": 0.001})
    held = canary_verdict(conn, strict.model_copy(update={"metrics": {"latency": narrow}}))
    assert "wide, above the maximum" in held.evidence["reason"][0]


def test_a_signal_without_the_cohort_label_is_unavailable(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    _write(conn, errors_labelled=False)
    held = canary_verdict(conn, RULES)
    assert _statuses(held.evidence)[("local", "error_rate")] == "unavailable"
    errors = held.evidence.filter(pl.col("metric") == "error_rate")
    assert set(errors["reason"]) == {"errors carries no 'model' label to split by"}
    assert held.verdict.verdict is Verdict.HOLD  # unavailable: hold (the default)
    ignored = canary_verdict(conn, RULES.model_copy(update={"unavailable": "ignore"}))
    assert ignored.verdict.verdict is Verdict.PROMOTE


def test_cohorts_are_chosen_or_refused(conn: duckdb.DuckDBPyConnection) -> None:
    _write(conn, slow=1.3)
    # Swapped: the slow version as the baseline makes the other faster, not slower.
    swapped = canary_verdict(conn, RULES, canary=OLD, baseline=NEW)
    local = next(r for r in swapped.verdict.routes if r.route == "local")
    assert local.metrics[0].estimate is not None
    assert local.metrics[0].estimate < 0.0
    assert canary_verdict(conn, RULES, baseline=NEW).verdict.canary == OLD
    with pytest.raises(InvalidQueryError, match="same cohort"):
        canary_verdict(conn, RULES, canary=NEW, baseline=NEW)
    with pytest.raises(
        InvalidQueryError,
        match=re.escape("no figures of model='x' in the metrics' signals (found: m@1.9, m@1.10)"),
    ):
        canary_verdict(conn, RULES, canary="x", baseline="y")
    with pytest.raises(InvalidQueryError, match="no 'flavour' cohort"):
        canary_verdict(conn, RULES.model_copy(update={"cohort_label": "flavour"}))
    with pytest.raises(InvalidQueryError, match="confidence level"):
        canary_verdict(conn, RULES, level=1.5)


def test_an_empty_warehouse_has_no_cohorts(conn: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(InvalidQueryError, match="no 'model' cohort to compare"):
        canary_verdict(conn, RULES)


def test_local_releases_are_judged_alike(tmp_path: Path) -> None:
    # Devices' own releases (local model, Laplace sums, discrete Laplace buckets): the
    # same verdict machinery, its intervals from many draws per figure.
    cells = [{"route": r, "model": m} for r in ROUTES for m in ("m1", "m2")]
    items, truth = build_fleet(devices=200, windows=2, counter_cells=cells, hist_cells=cells)
    conn = connect(tmp_path / "local.duckdb")
    try:
        write_envelopes(conn, items)
        rules = CanaryPolicy(
            metrics={
                "latency": CanaryMetric(
                    signal="test.latency", effect="ratio", max_increase=0.5, max_interval_width=5
                )
            }
        )
        # At 1 - 1e-6 a correct interval misses the truth with probability 1e-6.
        result = canary_verdict(conn, rules, level=1.0 - 1e-6)
    finally:
        conn.close()
    assert (result.verdict.canary, result.verdict.baseline) == ("m2", "m1")
    for route in ROUTES:
        n = {m: sum(truth.hist[(w, f'{{"model":"{m}","route":"{route}"}}')][0] for w in (0, 1))
             for m in ("m1", "m2")}  # fmt: skip
        s = {m: sum(truth.hist[(w, f'{{"model":"{m}","route":"{route}"}}')][1] for w in (0, 1))
             for m in ("m1", "m2")}  # fmt: skip
        true_effect = (s["m2"] / n["m2"]) / (s["m1"] / n["m1"]) - 1.0
        row = result.evidence.filter(pl.col("route") == route).row(0, named=True)
        assert row["devices"] == 200
        assert row["interval"] == "normal"  # 400 draws per figure
        # Each count (about 4,000 events, noise sd about 320) is clearly above zero.
        assert row["ci_low"] is not None
        assert row["ci_low"] <= true_effect <= row["ci_high"]


def test_only_the_policys_routes_are_judged(conn: duckdb.DuckDBPyConnection) -> None:
    _write(conn, slow=1.3)
    edge_only = canary_verdict(conn, RULES.model_copy(update={"routes": ["edge"]}))
    assert [r.route for r in edge_only.verdict.routes] == ["edge"]
    assert edge_only.verdict.verdict is Verdict.PROMOTE
    # A route listed without figures cannot be judged: it holds.
    absent = canary_verdict(conn, RULES.model_copy(update={"routes": ["edge", "cloud"]}))
    assert absent.verdict.verdict is Verdict.HOLD
    assert set(_statuses(absent.evidence).items()) >= {(("cloud", "latency"), "unavailable")}


def test_the_plot_draws_each_estimable_effect(conn: duckdb.DuckDBPyConnection) -> None:
    _write(conn, slow=1.3, errors_labelled=False)
    svg = canary_plot(canary_verdict(conn, RULES))
    assert svg is not None
    assert svg.startswith('<svg class="qw-plot" data-marks="')
    assert int(svg.split('data-marks="')[1].split('"')[0]) >= 2  # an interval per route
    assert "rollback" in svg
    assert "error_rate" not in svg  # unavailable: no panel
    # Nothing estimable, nothing drawn: the caller says so instead.
    insufficient = RULES.metrics["latency"].model_copy(update={"min_events": 1e9})
    unavailable = canary_verdict(conn, RULES.model_copy(update={"routes": ["cloud"]}))
    assert canary_plot(unavailable) is None
    held = canary_verdict(conn, RULES.model_copy(update={"metrics": {"latency": insufficient}}))
    assert canary_plot(held) is not None  # insufficient evidence still has an interval
