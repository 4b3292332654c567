"""A canary is compared with its baseline over the windows they share, and a rate over
the windows where both its events and its requests are still stored: pooled over other
windows, each cohort's figure mixes different times (a slow month behind the baseline,
errors kept 395 days over requests kept 90), and a true regression is promoted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pytest

from analytics import canary_verdict
from analytics._canary_verdict import Verdict
from policies import CanaryMetric, CanaryPolicy
from tests.analytics._aggregates import (
    AggregateTruth,
    Batch,
    Entry,
    histogram_batches,
    insert_batches,
)
from warehouse import connect

OLD, NEW = "m@1.9", "m@1.10"
LATENCY = CanaryPolicy(
    routes=["local"],
    metrics={
        "latency": CanaryMetric(
            signal="lat", effect="ratio", max_increase=0.10, max_interval_width=0.2
        )
    },
)
ERRORS = CanaryPolicy(
    routes=["local"],
    metrics={
        "error_rate": CanaryMetric(
            signal="errors",
            effect="difference",
            per_request="requests",
            max_increase=0.01,
            max_interval_width=0.02,
        )
    },
)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = connect(tmp_path / "w.duckdb")
    try:
        yield c
    finally:
        c.close()


def _latency(
    conn: duckdb.DuckDBPyConnection, window: int, means: dict[str, float], seed: int
) -> None:
    """One window's latency histogram, 20,000 events per cohort, small noise."""
    cells = [{"route": "local", "model": m} for m in means]
    batches = histogram_batches(
        "lat",
        window,
        cells,
        np.random.default_rng(seed),
        mean=list(means.values()),
        events=(20_000, 20_001),
        count_scale=20.0,
        sum_scale=2000.0,
        resolution=0.01,
    )
    insert_batches(conn, batches, AggregateTruth())


def test_a_canary_seen_in_one_window_is_judged_against_that_window(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    # Window 0 everything fast, window 1 everything 40% slower; the canary, 15% slower
    # than the baseline, reports only in window 0 (a canary rolled out late, say).
    _latency(conn, 0, {OLD: 1.0, NEW: 1.15}, seed=1)
    _latency(conn, 1, {OLD: 1.4}, seed=2)
    result = canary_verdict(conn, LATENCY, canary=NEW, baseline=OLD)
    (metric,) = result.verdict.routes[0].metrics
    assert metric.estimate == pytest.approx(0.15, abs=0.02)  # pooled, it read -5%
    assert result.verdict.verdict is Verdict.ROLLBACK
    assert result.verdict.window_end is not None
    window_days = (result.verdict.window_end - result.verdict.window_start).days
    assert window_days == 1  # the one window the two share, not both


def test_an_identical_canary_in_the_slow_window_only_is_promoted(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    _latency(conn, 0, {OLD: 1.0}, seed=3)
    _latency(conn, 1, {OLD: 1.4, NEW: 1.4}, seed=4)  # pooled, it read +17%: a rollback
    result = canary_verdict(conn, LATENCY, canary=NEW, baseline=OLD)
    (metric,) = result.verdict.routes[0].metrics
    assert metric.estimate == pytest.approx(0.0, abs=0.02)
    assert result.verdict.verdict is Verdict.PROMOTE


def _counts(conn: duckdb.DuckDBPyConnection, signal: str, window: int, per: dict[str, int]) -> None:
    entries = [Entry("counter", {"route": "local", "model": m}, n) for m, n in per.items()]
    insert_batches(conn, [Batch(signal, "cells", window, entries, 5.0)], AggregateTruth())


def test_a_rate_reads_only_windows_that_still_hold_its_requests(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    # Window 0: the baseline alone, its requests already deleted by retention (errors
    # are kept longer). Window 1: both cohorts, the canary's error rate 4% against 1%.
    _counts(conn, "errors", 0, {OLD: 3_000})
    _counts(conn, "errors", 1, {OLD: 1_000, NEW: 4_000})
    _counts(conn, "requests", 1, {OLD: 100_000, NEW: 100_000})
    result = canary_verdict(conn, ERRORS, canary=NEW, baseline=OLD)
    (metric,) = result.verdict.routes[0].metrics
    assert metric.baseline.value == pytest.approx(0.01, abs=0.002)  # pooled, it read 0.04
    assert metric.estimate == pytest.approx(0.03, abs=0.004)  # pooled, it read 0.0
    assert result.verdict.verdict is Verdict.ROLLBACK


def test_versions_the_natural_order_ties_are_ordered_by_their_text() -> None:
    from analytics._canary import _pick_cohorts

    # "m@1.01" and "m@1.1" are equal in natural order: the choice must not depend on the
    # order figures were read in (a set's, which moves with PYTHONHASHSEED).
    for seen in ({"m@1.01", "m@1.1", "m@1.0"}, {"m@1.1", "m@1.0", "m@1.01"}):
        assert _pick_cohorts(seen, "model", None, None) == ("m@1.1", "m@1.01")


def test_figures_too_noisy_to_tell_presence_hold_rather_than_fail(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    # A count's noise far above the counts (the local model below millions of devices):
    # no window shows the cohorts clearly, so every window is read, and the verdict holds.
    cells = [{"route": "local", "model": m} for m in (OLD, NEW)]
    batches = histogram_batches(
        "lat",
        0,
        cells,
        np.random.default_rng(5),
        mean=[1.0, 1.0],
        events=(50, 51),
        count_scale=5_000.0,
        sum_scale=500_000.0,
        resolution=0.01,
    )
    insert_batches(conn, batches, AggregateTruth())
    result = canary_verdict(conn, LATENCY, canary=NEW, baseline=OLD)
    assert result.verdict.verdict is Verdict.HOLD
    assert any("no window shows both cohorts clearly" in r for r in result.verdict.reasons)
    assert result.verdict.window_start is not None  # every window read, and said so
