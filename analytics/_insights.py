"""The report's answers beyond fleet figures: drift, the canary's verdict, cost, and the
auditor's view, each from its own analytics module and the policy's rules.

- Drift: for every histogram signal whose cells carry the canary policy's cohort label
  (`model`), the canary cohort against the baseline on each route (`drift_test`, with
  its noise-aware null). Signals without that label cannot be split by cohort and say
  so.
- Canary: `canary_verdict` under the policy's `canary:` rules.
- Cost: `cost_breakdown` under the policy's `cost:` model, and a what-if moving a share
  of cloud traffic to the edge (`cost_what_if`).
- Auditors: `build_auditor_report` with the policy's retention and, when given, the
  audit log.

A section that cannot be computed (no rules in the policy, no data, noise too large)
is `None` with a note saying why, never an empty chart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import polars as pl

from analytics._auditor import AuditorReport, build_auditor_report
from analytics._canary import CanaryResult, canary_verdict
from analytics._cost import cost_breakdown
from analytics._cost_whatif import cost_what_if
from analytics._drift import DriftResult, DriftSide, drift_test
from analytics._errors import AnalyticsError
from auditlog import AuditLog
from policies import HistogramSignal, Policy

__all__ = ["WHAT_IF_SHARE", "WHAT_IF_TARGET", "ReportInsights", "build_insights"]

WHAT_IF_SHARE = 0.3
WHAT_IF_TARGET = "edge"
_DRIFT_REPLICATES = 2000


@dataclass(frozen=True, slots=True)
class ReportInsights:
    """Drift, canary, cost and audit sections; None where not computed (see `notes`)."""

    drift: tuple[DriftResult, ...]
    canary: CanaryResult | None
    cost: pl.DataFrame | None
    what_if: pl.DataFrame | None
    what_if_share: float
    what_if_target: str
    auditor: AuditorReport | None
    notes: tuple[str, ...]


def _drift(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    canary: CanaryResult | None,
    since: datetime | None,
    until: datetime | None,
    notes: list[str],
) -> tuple[DriftResult, ...]:
    if canary is None or policy.canary is None:
        notes.append("drift: no canary and baseline cohorts to compare")
        return ()
    cohort, route_label = policy.canary.cohort_label, policy.canary.route_label
    base, new = canary.verdict.baseline, canary.verdict.canary
    out: list[DriftResult] = []
    for name, signal in policy.signals.items():
        if not isinstance(signal, HistogramSignal):
            continue
        if cohort not in signal.attributes:
            notes.append(f"drift: {name} has no {cohort!r} label to split cohorts by")
            continue
        routes: list[str | None] = list(signal.attributes.get(route_label, [])) or [None]
        for route in routes:
            where = {route_label: route} if route is not None else None
            try:
                out.append(
                    drift_test(
                        conn,
                        name,
                        DriftSide(labels={cohort: base}, since=since, until=until),
                        DriftSide(labels={cohort: new}, since=since, until=until),
                        where=where,
                        replicates=_DRIFT_REPLICATES,
                    )
                )
            except AnalyticsError as exc:
                notes.append(f"drift: {name} on {route_label}={route}: {exc}")
    return tuple(out)


def build_insights(
    conn: duckdb.DuckDBPyConnection,
    policy: Policy,
    *,
    audit: AuditLog | None = None,
    level: float = 0.95,
    since: datetime | None = None,
    until: datetime | None = None,
    source: str = "",
) -> ReportInsights:
    """Every section the policy's rules allow, over the windows in [since, until]."""
    notes: list[str] = []
    canary: CanaryResult | None = None
    if policy.canary is None:
        notes.append("canary: the policy has no canary rules")
    else:
        try:
            canary = canary_verdict(conn, policy.canary, since=since, until=until)
        except AnalyticsError as exc:
            notes.append(f"canary: {exc}")
    drift = _drift(conn, policy, canary, since, until, notes)
    cost = what_if = None
    if policy.cost is None:
        notes.append("cost: the policy has no cost model")
    else:
        try:
            cost = cost_breakdown(conn, policy.cost, level=level, since=since, until=until)
            what_if = cost_what_if(
                conn,
                policy.cost,
                share=WHAT_IF_SHARE,
                target=WHAT_IF_TARGET,
                level=level,
                since=since,
                until=until,
            )
        except AnalyticsError as exc:
            notes.append(f"cost: {exc}")
    auditor = build_auditor_report(
        conn, audit=audit, retention_days=policy.retention.days, source=source
    )
    return ReportInsights(
        drift=drift,
        canary=canary,
        cost=cost,
        what_if=what_if,
        what_if_share=WHAT_IF_SHARE,
        what_if_target=WHAT_IF_TARGET,
        auditor=auditor,
        notes=tuple(notes),
    )
