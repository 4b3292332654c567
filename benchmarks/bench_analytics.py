"""Analytics over ten million per-device rows: Quietwire (DuckDB) against pandas/scipy.

The warehouse holds a week of a pilot fleet's local releases (`_warehouse`: ten million
rows, each device-day's few hundred cells, buckets and sums). Both sides answer the same
questions:

- the fleet's figures: every cell's total per window with its noise variance and 95%
  interval, and each histogram's mean per (route, model) cell with a delta-method
  interval (the counts from the bucket rows, the sums from the sum rows);
- drift: the latency histogram of the canary model version against the stable one, by
  PSI, Jensen-Shannon distance and Wasserstein distance (scipy on the pandas side).

Quietwire runs its full report (`build_report`: the figures above and every per-label
rollup, cell summary and source table besides) and `drift_test` with its noise-aware
null distribution, from the DuckDB file. pandas starts from the rows already in a
DataFrame (loading them is not timed), and computes only the statistics, without a null
distribution (it prints a PSI where Quietwire's noise-aware test says the local
model's noise swamps the buckets): the ratio is in pandas' favour. Target (issue:
analytics): Quietwire at least 10x faster than pandas and under 2 s.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from analytics import build_report, open_warehouse, snapshot
from analytics._drift import DriftSide, drift_test
from analytics._noise import noise_variance
from benchmarks._warehouse import MODELS, fill_warehouse
from schemas import Mechanism

TEMPLATES, ROWS, DAYS = 200, 10_000_000, 7  # a week of a fleet's per-device rows
LATENCY = "gen_ai.client.operation.duration"
Z95 = 1.959963984540054
TARGET_RATIO, TARGET_SECONDS = 10.0, 2.0


def _quietwire(db: Path) -> tuple[float, int, float]:
    conn = open_warehouse(db)
    try:
        start = time.perf_counter()
        with snapshot(conn):  # the report and the drift test read one scan of the rows
            report = build_report(conn)
            drift = drift_test(
                conn,
                LATENCY,
                DriftSide(labels={"model": MODELS[0]}),
                DriftSide(labels={"model": MODELS[1]}),
                replicates=2000,
                seed=1,
            )
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    value = drift.statistics.filter(drift.statistics["statistic"] == "psi")["value"][0]
    return elapsed, report.totals.height, math.nan if value is None else float(value)


def _load(db: Path) -> pd.DataFrame:
    conn = open_warehouse(db)
    try:
        frame: pd.DataFrame = conn.execute(
            "SELECT *, attributes::VARCHAR AS cell FROM released_values"
        ).df()
        return frame
    finally:
        conn.close()


def _pandas(rows: pd.DataFrame) -> tuple[float, int, float]:
    start = time.perf_counter()
    pairs = rows[["mechanism", "scale"]].drop_duplicates()
    pairs["var"] = [
        noise_variance(Mechanism(m), float(s))
        for m, s in zip(pairs["mechanism"], pairs["scale"], strict=True)
    ]
    rows = rows.merge(pairs, on=["mechanism", "scale"], how="left")
    keys = ["signal", "kind", "cell", "bucket_index", "window_start"]
    totals = rows.groupby(keys, dropna=False, sort=False).agg(
        estimate=("value", "sum"), variance=("var", "sum"), devices=("device_id", "nunique")
    )
    half = Z95 * np.sqrt(totals["variance"])
    totals["ci_low"], totals["ci_high"] = totals["estimate"] - half, totals["estimate"] + half

    labels = {c: json.loads(c) for c in rows["cell"].unique()}
    hist = rows[rows["kind"].isin(["bucket", "sum"])]
    cells = hist.pivot_table(
        index=["signal", "cell"], columns="kind", values=["value", "var"], aggfunc="sum"
    )
    cells.columns = [f"{a}_{b}" for a, b in cells.columns]
    cells = cells.reset_index()
    cells["route"] = cells["cell"].map(lambda c: labels[c].get("route"))
    cells["model"] = cells["cell"].map(lambda c: labels[c].get("model"))
    sums = ["value_bucket", "value_sum", "var_bucket", "var_sum"]
    means = cells.groupby(["signal", "route", "model"], dropna=False)[sums].sum()
    n, s = means["value_bucket"], means["value_sum"]
    means = means.assign(
        mean=s / n, se=np.sqrt(means["var_sum"] / n**2 + s**2 * means["var_bucket"] / n**4)
    )

    lat = rows[(rows["signal"] == LATENCY) & (rows["kind"] == "bucket")]
    lat_model = lat["cell"].map(lambda c: labels[c].get("model"))
    per = lat.groupby([lat_model, lat["bucket_index"]])["value"].sum().clip(lower=0.0)
    p = per.loc[MODELS[0]].to_numpy()
    q = per.loc[MODELS[1]].to_numpy()
    p, q = p / p.sum(), q / q.sum()
    eps = 1e-6
    psi = float(np.sum((q - p) * np.log((q + eps) / (p + eps))))
    jensenshannon(p, q)
    positions = np.arange(len(p))
    wasserstein_distance(positions, positions, p, q)
    elapsed = time.perf_counter() - start
    return elapsed, len(totals), psi


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "fleet.duckdb"
        t0 = time.perf_counter()
        n = fill_warehouse(db, templates=TEMPLATES, rows=ROWS, days=DAYS)
        print(f"warehouse: {n:,} per-device rows written in {time.perf_counter() - t0:.1f} s")
        qw = min((_quietwire(db) for _ in range(3)), key=lambda r: r[0])
        rows = _load(db)
        pd_run = min((_pandas(rows) for _ in range(2)), key=lambda r: r[0])
    ratio = pd_run[0] / qw[0]
    for name, (secs, cells, psi) in (("quietwire report + drift", qw), ("pandas + scipy", pd_run)):
        shown = "not estimable (noise)" if math.isnan(psi) else f"{psi:.4f}"
        print(f"{name:<25} {secs:6.2f} s  ({cells:,} cell-windows, PSI {shown})")
    ok = ratio >= TARGET_RATIO and qw[0] <= TARGET_SECONDS
    verdict = "PASS" if ok else "MISS"
    print(
        f"ratio pandas/quietwire {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x), "
        f"quietwire {qw[0]:.2f} s (target <= {TARGET_SECONDS:.0f} s): {verdict}"
    )
    return 0 if ok and math.isfinite(ratio) else 1


if __name__ == "__main__":
    raise SystemExit(main())
