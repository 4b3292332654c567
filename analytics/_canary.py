"""Canary verdicts: a canary cohort against its baseline, per route, from the warehouse.

The cohorts are values of one attribute label (the policy's `canary.cohort_label`, by
default `model`): by default the newest model version found is the canary and the one
before it the baseline. For each metric of the policy's `canary.metrics` and each route
this reads the stored figures of both cohorts (secure aggregates and local releases
alike, `analytics._sources`), computes the effect size with its interval
(`analytics._canary_effects`) and judges it against the metric's threshold and minimum
evidence (`analytics._canary_verdict`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from analytics._canary_effects import Effect, Figure, difference_effect, ratio_effect
from analytics._canary_verdict import (
    CanaryVerdict,
    CohortEvidence,
    MetricEvidence,
    MetricStatus,
    RouteVerdict,
    evidence_frame,
    metric_status,
    overall_verdict,
    route_verdict,
)
from analytics._errors import InvalidQueryError
from analytics._intervals import check_level
from analytics._sources import Scope, Selection, component_sums, has_aggregates, label_keys
from analytics._totals import check_labels, noise_terms
from policies import OTHER, CanaryMetric, CanaryPolicy

__all__ = ["CanaryResult", "canary_verdict"]

# A histogram's mean per cell: its buckets added (local) or its own count entry
# (aggregate) over its sum, as `analytics._means` reads them.
_MEAN_PARTS = Selection(
    {
        ("local", "bucket"): "count",
        ("local", "sum"): "sum",
        ("aggregate", "count"): "count",
        ("aggregate", "sum"): "sum",
    }
)
_COUNTER = Selection.same(["counter"])
# A mean's count alone: what says a cohort had events in a window.
_MEAN_COUNT = Selection({("local", "bucket"): "count", ("aggregate", "count"): "count"})
_NO_VALUE = ("", OTHER)
_PRESENT_SDS = 3.0
"""A cohort counts as present in a window when its count there is this many noise
standard deviations above zero. A DP figure is never plainly absent: a declared
cohort's cells are released, noised, in every window, also before its rollout."""

# (route, cohort) -> part -> (figure, devices)
_Cells = dict[tuple[str, str], dict[str, tuple[Figure, int]]]


@dataclass(frozen=True, slots=True)
class CanaryResult:
    """The verdict (pydantic, for JSON) and its evidence as a Polars DataFrame."""

    verdict: CanaryVerdict
    evidence: pl.DataFrame


def _version_key(value: str) -> tuple[list[tuple[int, int | str]], str]:
    # Natural order: "m@1.10" after "m@1.9"; digit runs compare as numbers. Ties of the
    # natural order ("m@1.01" and "m@1.1") are broken by the text itself, so the choice
    # never depends on the order the figures were read in.
    natural = [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", value) if p]
    return natural, value


def _cells(
    conn: duckdb.DuckDBPyConnection,
    signal: str,
    selection: Selection,
    labels: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    *,
    paired: bool,
    windows: tuple[datetime, ...] | None = None,
) -> _Cells:
    """(route, cohort) -> part -> (figure, devices) of one signal; `paired` keeps only
    cells whose count and sum come from the same releases (a mean's); `windows`, if
    given, the windows read."""
    keys = [*label_keys(labels), ("{part}", "part")]
    scope = Scope(signal, since, until, selection, windows)
    sums = component_sums(conn, scope, keys, paired=paired)
    out: _Cells = {}
    for row in sums.iter_rows(named=True):
        figure = Figure(float(row["estimate"]), tuple(noise_terms(row["terms"])))
        cell = out.setdefault((row[labels[0]], row[labels[1]]), {})
        cell[row["part"]] = (figure, int(row["devices"]))
    return out


def _pick_cohorts(
    seen: set[str], label: str, canary: str | None, baseline: str | None
) -> tuple[str, str]:
    """(canary, baseline): as given, else the newest version `seen` and the one before."""
    found = sorted(seen, key=_version_key)
    listed = ", ".join(found) or "none"
    if canary is None:
        rest = [v for v in found if v != baseline]
        if not rest:
            raise InvalidQueryError(
                f"no {label!r} cohort to compare in the metrics' signals (found: {listed})"
            )
        canary = rest[-1]
    if baseline is None:
        older = [v for v in found if v != canary]
        if not older:
            raise InvalidQueryError(
                f"no baseline {label!r} cohort besides {canary!r} in the metrics' signals "
                f"(found: {listed})"
            )
        baseline = older[-1]
    if canary == baseline:
        raise InvalidQueryError(f"canary and baseline are the same cohort {canary!r}")
    for cohort in (canary, baseline):
        if cohort not in seen:
            raise InvalidQueryError(
                f"no figures of {label}={cohort!r} in the metrics' signals (found: {listed})"
            )
    return canary, baseline


def _parts_of(metric: CanaryMetric) -> tuple[str, str]:
    """The (numerator, denominator) parts of a metric's cells."""
    return ("sum", "count") if metric.effect == "ratio" else ("events", "requests")


def _metric_cells(
    conn: duckdb.DuckDBPyConnection,
    metric: CanaryMetric,
    labels: Sequence[str],
    since: datetime | None,
    until: datetime | None,
    windows: tuple[datetime, ...] | None = None,
) -> _Cells:
    if metric.effect == "ratio":
        return _cells(
            conn, metric.signal, _MEAN_PARTS, labels, since, until, paired=True, windows=windows
        )
    if metric.per_request is None:  # the policy model refuses this; a built one may not
        raise InvalidQueryError(f"metric on {metric.signal} is a difference without per_request")
    events = _cells(
        conn, metric.signal, _COUNTER, labels, since, until, paired=False, windows=windows
    )
    requests = _cells(
        conn, metric.per_request, _COUNTER, labels, since, until, paired=False, windows=windows
    )
    out: _Cells = {}
    for key, parts in events.items():
        if key in requests:
            out[key] = {"events": parts["counter"], "requests": requests[key]["counter"]}
    return out


def _evidence(
    name: str,
    metric: CanaryMetric,
    cells: _Cells,
    route: str,
    cohorts: tuple[str, str],
    level: float,
    label: str,
    labelled: bool,
) -> MetricEvidence:
    """`labelled`: whether the metric's figures carry the cohort label at all."""
    num, den = _parts_of(metric)
    sides = [cells.get((route, cohort), {}) for cohort in cohorts]
    common: dict[str, Any] = {
        "metric": name,
        "signal": metric.signal,
        "effect": metric.effect,
        "threshold": metric.max_increase,
    }
    if not all(num in s and den in s for s in sides):
        why = (
            f"no figures of {route!r} for both cohorts in the windows they share"
            if labelled
            else f"{metric.signal} carries no {label!r} label to split by"
        )
        empty = CohortEvidence(value=None, events=None, devices=None)
        return MetricEvidence(
            **common,
            estimate=None,
            ci_low=None,
            ci_high=None,
            interval=None,
            canary=empty,
            baseline=empty,
            status=MetricStatus.UNAVAILABLE,
            reason=why,
        )
    (c_num, c_dev), (c_den, _) = sides[0][num], sides[0][den]
    (b_num, b_dev), (b_den, _) = sides[1][num], sides[1][den]
    compute = ratio_effect if metric.effect == "ratio" else difference_effect
    effect: Effect | None = compute(c_num, c_den, b_num, b_den, level)

    def side(n: Figure, d: Figure, devices: int) -> CohortEvidence:
        value = n.estimate / d.estimate if d.estimate > 0.0 else None
        return CohortEvidence(value=value, events=d.estimate, devices=devices)

    devices = min(c_dev, b_dev)
    est, lo, hi = (
        (None, None, None) if effect is None else (effect.estimate, effect.ci_low, effect.ci_high)
    )
    status, reason = metric_status(metric, est, lo, hi, (c_den.estimate, b_den.estimate), devices)
    return MetricEvidence(
        **common,
        estimate=est,
        ci_low=lo,
        ci_high=hi,
        interval=None if effect is None else effect.method,
        canary=side(c_num, c_den, c_dev),
        baseline=side(b_num, b_den, b_dev),
        status=status,
        reason=reason,
    )


def _read_windows(
    conn: duckdb.DuckDBPyConnection,
    metric: CanaryMetric,
    label: str,
    cohorts: tuple[str, str],
    since: datetime | None,
    until: datetime | None,
) -> tuple[tuple[datetime, ...] | None, str | None]:
    """The windows a metric compares (None: every window in range) and, when the
    cohorts' shared windows cannot be told, why every window is read instead.

    Those are the windows in which both cohorts are present (`_PRESENT_SDS`) in every
    signal the metric reads (a rate: its events and its requests). Pooled over other
    windows, each cohort's figure would mix different times: a canary rolled out last
    week against the baseline's whole history (a slow month behind it makes the canary
    look fast), or a rate whose requests retention already deleted while its errors are
    kept longer (the baseline's old errors over recent requests alone).

    Where no window shows both cohorts clearly (under the local model a cohort's count
    is rarely three noise deviations above zero below millions of devices), presence
    cannot be judged: every window in range is added up, as `--since`/`--until` give
    it, and the verdict says so. Such figures are too noisy to pass or regress anyway."""
    if metric.effect == "ratio":
        reads = [(metric.signal, _MEAN_COUNT)]
    else:
        reads = [(metric.signal, _COUNTER), (metric.per_request or metric.signal, _COUNTER)]
    keys = [*label_keys([label]), ("r.window_start", "window")]
    common: set[datetime] | None = None
    for signal, selection in reads:
        sums = component_sums(conn, Scope(signal, since, until, selection), keys)
        present: dict[datetime, set[str]] = {}
        for row in sums.iter_rows(named=True):
            cohort, estimate, variance = row[label], row["estimate"], row["variance"]
            if cohort in cohorts and estimate > _PRESENT_SDS * max(variance, 0.0) ** 0.5:
                present.setdefault(row["window"], set()).add(cohort)
        both = {window for window, seen in present.items() if len(seen) == len(cohorts)}
        common = both if common is None else common & both
    if common:
        return tuple(sorted(common)), None
    return None, (
        f"{metric.signal}: no window shows both cohorts clearly; every window in range "
        "added up (narrow it with --since/--until to the canary's)"
    )


def _window_range(
    conn: duckdb.DuckDBPyConnection,
    signals: Sequence[str],
    windows: Sequence[datetime] | None,
    since: datetime | None,
    until: datetime | None,
) -> tuple[datetime | None, datetime | None]:
    """The first start and the last end of these windows of `signals` (None: every
    window in [since, until]); (None, None) if there are none."""
    if windows is not None and not windows:
        return None, None
    tables = ["released_values", *(["fleet_aggregates"] if has_aggregates(conn) else [])]
    union = " UNION ALL ".join(
        f"SELECT window_start, window_end FROM {t} WHERE signal IN (SELECT unnest(?))"
        " AND (?::TIMESTAMPTZ[] IS NULL OR window_start IN (SELECT unnest(?::TIMESTAMPTZ[])))"
        " AND (?::TIMESTAMPTZ IS NULL OR window_start >= ?)"
        " AND (?::TIMESTAMPTZ IS NULL OR window_end <= ?)"
        for t in tables
    )
    chosen = None if windows is None else list(windows)
    params: list[Any] = [list(signals), chosen, chosen, since, since, until, until] * len(tables)
    # fetchall, not fetchone: an unfinished result would make the connection refuse the
    # next relation query (DuckDB 2).
    rows = conn.execute(
        f"SELECT min(window_start), max(window_end) FROM ({union})", params
    ).fetchall()
    return (rows[0][0], rows[0][1]) if rows else (None, None)


def canary_verdict(
    conn: duckdb.DuckDBPyConnection,
    rules: CanaryPolicy | None = None,
    *,
    canary: str | None = None,
    baseline: str | None = None,
    level: float | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> CanaryResult:
    """Promote, hold or rollback: the canary cohort against the baseline, per route.

    `rules` is a policy's `canary` section (default: `CanaryPolicy()`, latency only);
    its `routes` are judged (default: every route either cohort has figures on).
    `canary`/`baseline` are values of its `cohort_label` (default: the newest version
    found in the metrics' signals, and the one before it). `level` overrides the
    policy's interval level. Each metric adds up the windows in [since, until] in which
    both cohorts have figures of everything it reads (`_read_windows`); the
    verdict's `window_start`/`window_end` span those windows.
    """
    rules = rules or CanaryPolicy()
    level = check_level(rules.level if level is None else level)
    labels = check_labels([rules.route_label, rules.cohort_label])
    cells = {
        name: _metric_cells(conn, metric, labels, since, until)
        for name, metric in rules.metrics.items()
    }
    seen = {c for by_key in cells.values() for _, c in by_key if c not in _NO_VALUE}
    cohorts = _pick_cohorts(seen, rules.cohort_label, canary, baseline)
    labelled = {
        name: any(cohort not in _NO_VALUE for _, cohort in by_key) for name, by_key in cells.items()
    }
    # Each metric compares the cohorts over the windows they share, nothing else.
    reads = {
        name: _read_windows(conn, metric, rules.cohort_label, cohorts, since, until)
        for name, metric in rules.metrics.items()
    }
    cells = {
        name: _metric_cells(conn, metric, labels, since, until, reads[name][0])
        for name, metric in rules.metrics.items()
    }
    notes = [why for _, why in reads.values() if why is not None]
    found = {
        r for by_key in cells.values() for r, c in by_key if r not in _NO_VALUE and c in cohorts
    }
    if not found and rules.routes is None:
        raise InvalidQueryError(f"no {rules.route_label!r} label on the cohorts' figures")
    routes = list(rules.routes) if rules.routes is not None else sorted(found)
    ignore = rules.unavailable == "ignore"
    verdicts: list[RouteVerdict] = []
    reasons: list[str] = []
    for route in routes:
        metrics = [
            _evidence(
                name, metric, cells[name], route, cohorts, level, rules.cohort_label, labelled[name]
            )
            for name, metric in rules.metrics.items()
        ]
        verdict = route_verdict(metrics, ignore_unavailable=ignore)
        verdicts.append(RouteVerdict(route=route, verdict=verdict, metrics=metrics))
        reasons.extend(
            f"{route}: {m.metric} {m.status.value}: {m.reason}"
            for m in metrics
            if m.status is not MetricStatus.PASS
        )
    read = [windows for windows, _ in reads.values()]
    start, end = _window_range(
        conn,
        sorted({m.signal for m in rules.metrics.values()}),
        None if any(w is None for w in read) else sorted({x for w in read if w for x in w}),
        since,
        until,
    )
    result = CanaryVerdict(
        verdict=overall_verdict(verdicts),
        cohort_label=rules.cohort_label,
        canary=cohorts[0],
        baseline=cohorts[1],
        level=level,
        window_start=start,
        window_end=end,
        routes=verdicts,
        reasons=[*notes, *reasons],
    )
    return CanaryResult(result, evidence_frame(result))
