"""Drift: does a histogram signal differ between two sides, beyond what its noise explains?

A side is a set of released cells: the cells whose labels match (e.g. route=local and
model=qwen2.5-7b@1.1, any other label added up) in a time range. Compare two model
versions, two cohorts (any label) or two time ranges. Both privacy models are read alike
(`analytics._sources`): per side its buckets, its events (locally the buckets added,
under secure aggregation the cells' count entries) and its sum of values, each with the
noise terms the warehouse declares for it. The test itself is `analytics._drift_null`;
the distances `analytics._drift_stats`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from statistics import NormalDist
from typing import Any

import duckdb
import numpy as np
import polars as pl

from analytics._drift_null import ALL_STATISTICS, HistogramSide, NullTest, noise_aware_test
from analytics._drift_stats import Positions, bucket_positions, shares
from analytics._errors import InvalidQueryError
from analytics._held import check_labels_held, check_signal_held
from analytics._noise import NoiseTerm
from analytics._sources import Planned, Scope, Selection, SumsRequest, label_keys, run_planned
from analytics._totals import check_labels
from schemas import Mechanism

__all__ = ["DRIFT", "NOT_ESTIMABLE", "NO_DRIFT", "DriftResult", "DriftSide", "drift_test"]

DRIFT = "drift"
NO_DRIFT = "no drift"
NOT_ESTIMABLE = "not estimable"
MAX_REPLICATES = 200_000
"""More replicates than this hold gigabytes of simulated histograms for no visible gain."""

# Per side: its buckets, its events (the buckets added locally, the count entries of
# secure aggregates) and its sums.
_SIDE = Selection(
    {
        ("local", "bucket"): "bucket",
        ("aggregate", "bucket"): "bucket",
        ("aggregate", "count"): "count",
        ("local", "sum"): "sum",
        ("aggregate", "sum"): "sum",
    }
)
_ROW_KEYS = [
    ("r.model", "figure_model"),
    ("{part}", "part"),
    ("r.bucket_index", "bucket_index"),
    ("r.bucket_upper", "bucket_upper"),
]


@dataclass(frozen=True, slots=True)
class DriftSide:
    """Which released cells one side reads: matching `labels`, windows in [since, until]."""

    labels: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None

    def describe(self) -> str:
        """`route=local model=x, 2026-03-01..2026-03-02` (or `all`)."""
        parts = [_labels_text(self.labels)]
        if self.since is not None or self.until is not None:
            lo = self.since.isoformat() if self.since else "…"
            hi = self.until.isoformat() if self.until else "…"
            parts.append(f"{lo}..{hi}")
        return ", ".join(p for p in parts if p) or "all"


@dataclass(frozen=True, slots=True)
class DriftResult:
    """A drift test's answer.

    `statistics`: one row per statistic (psi, js_distance, wasserstein, mean_shift) and
    a last `family` row (the min-p verdict over the estimable ones): value, threshold
    (the null's 1-alpha quantile), p_value, verdict (drift / no drift / not estimable;
    value, threshold and p_value are null when not estimable), events_a/events_b
    (estimated), devices_a/devices_b. `buckets`: per side and bucket, the events with
    their noise standard deviation and the share of the side's events.
    """

    signal: str
    a: str
    b: str
    alpha: float
    replicates: int
    positions: Positions
    verdict: str
    p_value: float | None
    mean_a: float | None
    mean_b: float | None
    statistics: pl.DataFrame
    buckets: pl.DataFrame
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the fields, frames as lists of records."""
        return {
            "signal": self.signal,
            "a": self.a,
            "b": self.b,
            "alpha": self.alpha,
            "replicates": self.replicates,
            "positions": self.positions,
            "verdict": self.verdict,
            "p_value": self.p_value,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "notes": list(self.notes),
            "statistics": self.statistics.to_dicts(),
            # NaN (a side with nothing above zero has no shares) is not JSON: null.
            "buckets": self.buckets.fill_nan(None).to_dicts(),
        }


def _labels_text(labels: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _side_labels(where: Mapping[str, str], side: DriftSide) -> dict[str, str]:
    out = dict(where)
    for label, value in side.labels.items():
        if out.get(label, value) != value:
            raise InvalidQueryError(f"label {label!r} is both {out[label]!r} and {value!r}")
        out[label] = value
    check_labels(sorted(out))
    return out


def _terms(rows: pl.DataFrame) -> list[dict[str, Any]]:
    return [t for terms in rows["terms"].to_list() for t in terms]


def _noise(terms: list[dict[str, Any]]) -> tuple[NoiseTerm, ...]:
    return tuple(
        NoiseTerm(Mechanism(t["mechanism"]), float(t["scale"]), int(t["n"]), float(t["resolution"]))
        for t in terms
    )


def _read_sides(
    conn: duckdb.DuckDBPyConnection,
    signal: str,
    sides: Sequence[tuple[Mapping[str, str], DriftSide]],
) -> list[pl.DataFrame]:
    """Each side's rows (its labels and time range), read in one statement."""

    def plan(labels: Mapping[str, str], side: DriftSide) -> Planned:
        names = sorted(labels)

        def keep(rows: pl.DataFrame) -> pl.DataFrame:
            for name in names:
                rows = rows.filter(pl.col(name) == labels[name])
            return rows

        scope = Scope(signal, side.since, side.until, _SIDE)
        return Planned(SumsRequest(scope, (*label_keys(names), *_ROW_KEYS)), keep)

    return run_planned(conn, [plan(labels, side) for labels, side in sides])


def _histogram_side(rows: pl.DataFrame, uppers: tuple[float | None, ...]) -> HistogramSide:
    buckets = rows.filter(pl.col("part") == "bucket")
    agg_count = rows.filter((pl.col("part") == "count") & (pl.col("figure_model") == "aggregate"))
    sums = rows.filter(pl.col("part") == "sum")
    # Without count entries the events are the buckets added: they share all their draws.
    own = pl.col("figure_model") == "aggregate" if agg_count.height else pl.lit(False)
    estimates = np.zeros(len(uppers))
    shared_terms: list[tuple[NoiseTerm, ...]] = []
    own_terms: list[tuple[NoiseTerm, ...]] = []
    for k in range(len(uppers)):
        at = buckets.filter(pl.col("bucket_index") == k)
        estimates[k] = float(at["estimate"].sum())
        shared_terms.append(_noise(_terms(at.filter(~own))))
        own_terms.append(_noise(_terms(at.filter(own))))
    shared_events = buckets.filter(~own)["estimate"].sum()
    events = float(shared_events) + float(agg_count["estimate"].sum())
    # The same devices release every bucket: the most over buckets, per model.
    devices = 0
    for model in ("local", "aggregate"):
        most = buckets.filter(pl.col("figure_model") == model)["devices"].max()
        devices += int(most) if isinstance(most, int) else 0
    return HistogramSide(
        buckets=estimates,
        uppers=uppers,
        shared_terms=tuple(shared_terms),
        own_terms=tuple(own_terms),
        events=events,
        events_terms=_noise(_terms(agg_count)),
        total=float(sums["estimate"].sum()) if sums.height else None,
        total_terms=_noise(_terms(sums)),
        devices=devices,
    )


def _uppers(
    conn: duckdb.DuckDBPyConnection,
    rows: pl.DataFrame,
    name: str,
    signal: str,
    labels: Mapping[str, str],
) -> tuple[float | None, ...]:
    pairs = (
        rows.filter(pl.col("part") == "bucket")
        .select("bucket_index", "bucket_upper")
        .unique()
        .sort("bucket_index")
    )
    if not pairs.height:
        # Nothing matched: a label no figure carries says so; else the values or range.
        check_labels_held(conn, signal, sorted(labels), option=f"side {name}")
        raise InvalidQueryError(f"side {name}: no released buckets of {signal!r} match")
    indexes = pairs["bucket_index"].to_list()
    if indexes != list(range(len(indexes))):
        raise InvalidQueryError(f"side {name}: {signal!r} has differing bucket bounds in range")
    return tuple(pairs["bucket_upper"].to_list())


def _bucket_frame(name: str, side: HistogramSide, z: float) -> pl.DataFrame:
    sd = side.bucket_sd
    share = shares(side.buckets)
    scale = side.events if side.events > 0.0 else math.nan
    return pl.DataFrame(
        {
            "side": [name] * len(side.uppers),
            "bucket_index": list(range(len(side.uppers))),
            "bucket_upper": list(side.uppers),
            "estimate": side.buckets,
            "std_error": sd,
            "share": share,
            "share_low": (side.buckets - z * sd) / scale,
            "share_high": (side.buckets + z * sd) / scale,
        },
        schema_overrides={"bucket_upper": pl.Float64},
    )


def _statistics_frame(
    test: NullTest, a: HistogramSide, b: HistogramSide, alpha: float
) -> pl.DataFrame:
    def verdict(p: float, ok: bool) -> str:
        if not ok or math.isnan(p):
            return NOT_ESTIMABLE
        return DRIFT if p <= alpha else NO_DRIFT

    def num(x: float, ok: bool) -> float | None:
        return x if ok and math.isfinite(x) else None

    family_ok = not math.isnan(test.family_p)
    rows = [
        (s, num(v, e), num(t, e), num(p, e), verdict(p, e))
        for s, v, t, p, e in zip(
            ALL_STATISTICS, test.values, test.thresholds, test.p_values, test.estimable, strict=True
        )
    ]
    rows.append(
        ("family", None, None, num(test.family_p, family_ok), verdict(test.family_p, family_ok))
    )
    frame = pl.DataFrame(
        rows,
        schema={
            "statistic": pl.String,
            "value": pl.Float64,
            "threshold": pl.Float64,
            "p_value": pl.Float64,
            "verdict": pl.String,
        },
        orient="row",
    )
    return frame.with_columns(
        events_a=pl.lit(a.events),
        events_b=pl.lit(b.events),
        devices_a=pl.lit(a.devices, dtype=pl.Int64),
        devices_b=pl.lit(b.devices, dtype=pl.Int64),
    )


def drift_test(
    conn: duckdb.DuckDBPyConnection,
    signal: str,
    a: DriftSide,
    b: DriftSide,
    *,
    where: Mapping[str, str] | None = None,
    alpha: float = 0.01,
    replicates: int = 2000,
    positions: Positions = "order",
    seed: int | None = None,
) -> DriftResult:
    """Test whether histogram `signal` drifted from side `a` to side `b`.

    `where` labels apply to both sides. The threshold of each statistic is the (1-alpha)
    quantile of its null distribution, simulated (`replicates` times) from the declared
    noise of the very cells compared plus the events' own sampling noise
    (`analytics._drift_null`). `positions` places buckets for the Wasserstein distance:
    by index (`order`) or at their midpoints in the signal's unit (`edges`).
    """
    if not 0.0 < alpha < 0.5:
        raise InvalidQueryError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if replicates > MAX_REPLICATES:
        raise InvalidQueryError(f"replicates must be at most {MAX_REPLICATES:,}, got {replicates}")
    if replicates < math.ceil(1.0 / alpha):
        raise InvalidQueryError(
            f"replicates must be at least 1/alpha = {math.ceil(1.0 / alpha)}, got {replicates}"
        )
    if positions not in ("order", "edges"):
        raise InvalidQueryError(f"positions must be 'order' or 'edges', got {positions!r}")
    base = dict(where or {})
    labels_a, labels_b = _side_labels(base, a), _side_labels(base, b)
    check_signal_held(conn, signal, "histogram")
    rows_a, rows_b = _read_sides(conn, signal, [(labels_a, a), (labels_b, b)])
    uppers = _uppers(conn, rows_a, "a", signal, labels_a)
    if _uppers(conn, rows_b, "b", signal, labels_b) != uppers:
        raise InvalidQueryError(f"the two sides' {signal!r} buckets have different bounds")
    side_a = _histogram_side(rows_a, uppers)
    side_b = _histogram_side(rows_b, uppers)
    test = noise_aware_test(
        side_a,
        side_b,
        bucket_positions(uppers, positions),
        alpha=alpha,
        replicates=replicates,
        rng=np.random.default_rng(seed),
    )
    family = math.nan if math.isnan(test.family_p) else test.family_p
    verdict = NOT_ESTIMABLE if math.isnan(family) else DRIFT if family <= alpha else NO_DRIFT
    # The plot's noise band: each bucket's noise at level 1 - alpha (two-sided, normal).
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    return DriftResult(
        signal=signal,
        a=a.describe() if not base else f"{a.describe()} (where {_labels_text(base)})",
        b=b.describe() if not base else f"{b.describe()} (where {_labels_text(base)})",
        alpha=alpha,
        replicates=replicates,
        positions=positions,
        verdict=verdict,
        p_value=None if math.isnan(family) else family,
        mean_a=None if math.isnan(test.mean_a) else test.mean_a,
        mean_b=None if math.isnan(test.mean_b) else test.mean_b,
        statistics=_statistics_frame(test, side_a, side_b, alpha),
        buckets=pl.concat([_bucket_frame("a", side_a, z), _bucket_frame("b", side_b, z)]),
        notes=test.notes,
    )
