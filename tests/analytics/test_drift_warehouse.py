"""Drift end to end: local-model envelopes with real OpenDP noise, written through
`warehouse.write_envelopes` into a DuckDB file, read by `drift_test` and `quietwire drift`.

Two model versions; the second is twice as slow in the second window. OpenDP noise is
not seedable; the shift is many noise standard deviations, so the verdicts below fail
with probability far below 1e-6.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from analytics import DriftSide, drift_plot, drift_test, open_warehouse
from analytics.cli import app
from schemas import HistogramAggregate, IngestedEnvelope, Mechanism, NoiseSpec, Tier
from tests.analytics._aggregates import AggregateTruth, histogram_batches, insert_batches
from tests.analytics._fleet import T0, _envelope, continuous_laplace, discrete_laplace
from warehouse import connect, write_envelopes

_DEVICES = 400
_BOUNDS = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
_COUNT = NoiseSpec(
    mechanism=Mechanism.DISCRETE_LAPLACE, scale=2.0, epsilon=2.0, lower=0.0, upper=2.0
)
_SUM = NoiseSpec(mechanism=Mechanism.LAPLACE, scale=5.0, epsilon=2.0, lower=0.0, upper=5.0)
_SIGNAL = "test.latency"
_HOUR = timedelta(hours=1)


def _envelopes(rng: np.random.Generator) -> tuple[list[IngestedEnvelope], dict[str, int]]:
    """Window 0: both models alike; window 1: model B twice as slow. Each device runs
    one model and releases both cells (zeros for the other), as a client does."""
    counts = discrete_laplace(_COUNT.scale)
    sums = continuous_laplace(_SUM.scale)
    edges = np.asarray(_BOUNDS)
    events = {"A": 0, "B": 0}
    items = []
    for window in (0, 1):
        for device in range(_DEVICES):
            model = "A" if device % 2 else "B"
            aggs: list[object] = []
            for cell in ("A", "B"):
                n = int(rng.poisson(30)) if cell == model else 0
                median = 1.6 if (cell == "B" and window == 1) else 0.8
                values = rng.lognormal(np.log(median), 0.5, size=n)
                true = np.bincount(np.searchsorted(edges, values), minlength=len(_BOUNDS) + 1)
                if window == 0:
                    events[cell] += n
                aggs.append(
                    HistogramAggregate(
                        signal=_SIGNAL,
                        tier=Tier.PERFORMANCE,
                        unit="s",
                        attributes={"model": cell},
                        bounds=_BOUNDS,
                        counts=[float(c) for c in counts([int(c) for c in true])],
                        count_noise=_COUNT,
                        sum=float(sums([float(values.sum())])[0]),
                        sum_noise=_SUM,
                    )
                )
            items.append(_envelope(device, window, aggs))
    return items, events


@pytest.fixture(scope="module")
def warehouse_file(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("drift") / "warehouse.duckdb"
    items, events = _envelopes(np.random.default_rng(17))
    conn = connect(path)
    try:
        write_envelopes(conn, items)
    finally:
        conn.close()
    return path, events


def test_a_slower_model_version_drifts(
    warehouse_file: tuple[Path, dict[str, int]],
) -> None:
    path, events = warehouse_file
    conn = open_warehouse(path)
    try:
        slower = drift_test(
            conn,
            _SIGNAL,
            DriftSide({"model": "A"}, since=T0 + _HOUR),
            DriftSide({"model": "B"}, since=T0 + _HOUR),
            seed=1,
        )
        before = drift_test(
            conn,
            _SIGNAL,
            DriftSide({"model": "A"}, until=T0 + _HOUR),
            DriftSide({"model": "B"}, until=T0 + _HOUR),
            seed=1,
        )
    finally:
        conn.close()
    assert slower.verdict == "drift"
    assert slower.statistics["verdict"].to_list() == ["drift"] * 5
    assert slower.mean_b is not None
    assert slower.mean_a is not None
    assert slower.mean_b / slower.mean_a == pytest.approx(2.0, rel=0.15)
    row = before.statistics.row(0, named=True)
    assert row["devices_a"] == row["devices_b"] == _DEVICES
    # Events are the buckets added: 7 draws per device at scale 2 (sd about 3.6 each).
    sd = np.sqrt(_DEVICES * 7 * 2 * 2.0**2)
    assert abs(row["events_a"] - events["A"]) < 6 * sd
    assert abs(row["events_b"] - events["B"]) < 6 * sd
    # The shift's p-value is at the floor of 2,000 replicates. The window without a shift
    # is read in full (every statistic estimable); whether it alarms is chance at rate
    # alpha, measured in test_drift.py, not asserted here.
    assert slower.p_value is not None
    assert slower.p_value <= 1.0 / 1000
    assert before.statistics["value"].null_count() == 1  # only the family row
    svg = drift_plot(slower)
    assert svg is not None
    assert svg.startswith("<svg")


def test_time_ranges_compare_one_cohort_with_itself(
    warehouse_file: tuple[Path, dict[str, int]],
) -> None:
    path, _ = warehouse_file
    conn = open_warehouse(path)
    try:
        result = drift_test(
            conn,
            _SIGNAL,
            DriftSide(until=T0 + _HOUR),
            DriftSide(since=T0 + _HOUR),
            where={"model": "B"},
            seed=2,
        )
    finally:
        conn.close()
    assert result.verdict == "drift"
    assert "model=B" in result.a
    assert "model=B" in result.b


def _cli(*args: str) -> tuple[int, str, str]:
    out = CliRunner().invoke(app, ["drift", *args])
    return out.exit_code, out.stdout, out.stderr


def test_cli_formats(warehouse_file: tuple[Path, dict[str, int]]) -> None:
    path, _ = warehouse_file
    common = [
        "--db", str(path), "--signal", _SIGNAL, "--a", "model=A", "--b", "model=B",
        "--a-since", "2025-03-01T01:00:00Z", "--b-since", "2025-03-01T01:00:00Z",
        "--replicates", "500", "--seed", "3",
    ]  # fmt: skip
    code, out, _ = _cli(*common, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["verdict"] == "drift"
    assert [s["statistic"] for s in doc["statistics"]] == [
        "psi", "js_distance", "wasserstein", "mean_shift", "family",
    ]  # fmt: skip
    assert len(doc["buckets"]) == 2 * (len(_BOUNDS) + 1)
    code, out, _ = _cli(*common, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert [r["verdict"] for r in rows] == ["drift"] * 5
    code, out, _ = _cli(*common, "--positions", "edges")
    assert code == 0
    assert "verdict: drift" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--a", "model"], "is not label=value"),
        (["--a", "model=A", "--b", "model=B", "--a-since", "yesterday"], "ISO 8601"),
        (["--a", "model=A", "--b", "model=B", "--alpha", "0.9"], "alpha must be"),
        (["--a", "model=A", "--b", "model=Z"], "no released buckets"),
        (["--a", "model=A", "--b", "model=A"], "the same cells"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    warehouse_file: tuple[Path, dict[str, int]], args: list[str], message: str
) -> None:
    path, _ = warehouse_file
    code, _, err = _cli("--db", str(path), "--signal", _SIGNAL, *args)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_a_negative_seed_is_exit_2(warehouse_file: tuple[Path, dict[str, int]]) -> None:
    path, _ = warehouse_file
    args = ("--db", str(path), "--signal", _SIGNAL, "--a", "model=A", "--b", "model=B")
    code, out, err = _cli(*args, "--seed", "-1")
    assert code == 2
    assert "--seed" in err
    assert "Traceback" not in out + err


def test_cli_missing_warehouse(tmp_path: Path) -> None:
    code, _, err = _cli("--db", str(tmp_path / "none.duckdb"), "--a", "model=A", "--b", "model=B")
    assert code == 2
    assert "no such warehouse file" in err


def test_secure_aggregates_read_their_count_entries(tmp_path: Path) -> None:
    """`fleet_aggregates` rows (two OpenDP draws per entry): the events come from the
    cells' count entries, the devices from the batches' reports."""
    path = tmp_path / "aggregates.duckdb"
    cells = [{"model": "A"}, {"model": "B"}]
    rng = np.random.default_rng(23)
    batches = histogram_batches(
        _SIGNAL,
        0,
        cells,
        rng,
        bounds=_BOUNDS,
        count_scale=20.0,
        mean=[0.8, 1.6],
        events=(20_000, 20_001),
        reports=700,
    )
    truth = AggregateTruth()
    conn = connect(path)
    try:
        insert_batches(conn, batches, truth)
    finally:
        conn.close()
    conn = open_warehouse(path)
    try:
        result = drift_test(
            conn, _SIGNAL, DriftSide({"model": "A"}), DriftSide({"model": "B"}), seed=4
        )
    finally:
        conn.close()
    assert result.verdict == "drift"
    assert result.statistics["verdict"].to_list() == ["drift"] * 5
    row = result.statistics.row(0, named=True)
    assert row["devices_a"] == row["devices_b"] == 700
    # A count entry is two discrete Laplace draws at scale 20 (sd about 40).
    assert abs(row["events_a"] - 20_000) < 6 * 40
    assert abs(row["events_b"] - 20_000) < 6 * 40


def test_no_plot_when_a_side_has_nothing_above_zero(
    warehouse_file: tuple[Path, dict[str, int]],
) -> None:
    path, _ = warehouse_file
    conn = open_warehouse(path)
    try:
        result = drift_test(conn, _SIGNAL, DriftSide({"model": "A"}), DriftSide({"model": "B"}))
    finally:
        conn.close()
    empty_b = result.buckets.with_columns(
        share=pl.when(pl.col("side") == "b").then(float("nan")).otherwise(pl.col("share"))
    )
    assert drift_plot(replace(result, buckets=empty_b)) is None
