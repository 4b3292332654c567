"""Quietwire analytics: the DuckDB warehouse, fleet totals with honest intervals, reports.

Read a warehouse with `open_warehouse`, then query it: `fleet_totals` (every released
cell per window), `signal_totals` / `requests_by_route` (totals rolled up by labels),
`grand_totals` / `fleet_mean` (over all cells), `mean_by_labels` (histogram means),
`histogram_buckets` (events per bucket), `cell_summary` (one row per cell over a range).
`canary_verdict` judges a canary model version against its baseline (promote, hold or
rollback, with the evidence per route and metric; `canary_plot` draws it).
`drift_test` asks whether a histogram signal changed between two sides (`DriftSide`:
labels and a time range) beyond what its noise explains (`DriftResult`; `drift_plot`).
`cost_breakdown` prices each route's use with the policy's cost model (per inference,
per 1,000 tokens and in total, with intervals); `cost_what_if` projects a move of cloud
traffic to edge or local; `focus_rows` / `write_focus` / `read_focus` export FinOps
FOCUS rows (CSV, Parquet); `cost_figure`, `what_if_figure`, `what_if_change_figure`.
Figures of both privacy models are read alike: devices' local releases and secure
aggregates. Every result is a Polars DataFrame with estimate, std_error, ci_low/ci_high,
the interval method, the privacy model and the mechanism. Each query reads the local
model's rows added per cell; `with snapshot(conn): ...` makes several queries share one
such scan (`build_report` does).

For auditors: `build_auditor_report` (data held by tier and region, retention runs,
deletion requests and their erasure, the audit log's chain) gives an `AuditorReport`
of Polars frames.
"""

from analytics._auditor import AuditorReport, ChainStatus, build_auditor_report
from analytics._basis import FleetBasis, fleet_basis
from analytics._canary import CanaryResult, canary_verdict
from analytics._canary_plot import canary_plot
from analytics._canary_verdict import CanaryVerdict
from analytics._cost import cost_breakdown
from analytics._cost_focus import focus_rows, read_focus, write_focus
from analytics._cost_plots import cost_figure, what_if_change_figure, what_if_figure
from analytics._cost_whatif import cost_what_if
from analytics._cube import local_cube as snapshot
from analytics._drift import DriftResult, DriftSide, drift_test
from analytics._drift_plot import drift_plot
from analytics._errors import AnalyticsError, InvalidQueryError, WarehouseError
from analytics._html import render_html
from analytics._intervals import NORMAL_MAX_EXCESS_KURTOSIS
from analytics._means import cell_summary, fleet_mean, mean_by_labels
from analytics._noise import noise_fourth_cumulant, noise_variance
from analytics._reader import open_warehouse
from analytics._report import (
    FleetReport,
    FleetTruth,
    build_report,
    render_fleet_table,
    render_json,
    render_table,
)
from analytics._totals import (
    fleet_totals,
    grand_totals,
    histogram_buckets,
    requests_by_route,
    signal_totals,
)

__all__ = [
    "NORMAL_MAX_EXCESS_KURTOSIS",
    "AnalyticsError",
    "AuditorReport",
    "CanaryResult",
    "CanaryVerdict",
    "ChainStatus",
    "DriftResult",
    "DriftSide",
    "FleetBasis",
    "FleetReport",
    "FleetTruth",
    "InvalidQueryError",
    "WarehouseError",
    "build_auditor_report",
    "build_report",
    "canary_plot",
    "canary_verdict",
    "cell_summary",
    "cost_breakdown",
    "cost_figure",
    "cost_what_if",
    "drift_plot",
    "drift_test",
    "fleet_basis",
    "fleet_mean",
    "fleet_totals",
    "focus_rows",
    "grand_totals",
    "histogram_buckets",
    "mean_by_labels",
    "noise_fourth_cumulant",
    "noise_variance",
    "open_warehouse",
    "read_focus",
    "render_fleet_table",
    "render_html",
    "render_json",
    "render_table",
    "requests_by_route",
    "signal_totals",
    "snapshot",
    "what_if_change_figure",
    "what_if_figure",
    "write_focus",
]
