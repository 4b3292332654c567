"""The analytics package's public door."""

from __future__ import annotations

import analytics


def test_public_names_are_pinned() -> None:
    assert sorted(analytics.__all__) == sorted(
        [
            "NORMAL_MAX_EXCESS_KURTOSIS",
            "AnalyticsError",
            "AuditorReport",
            "ChainStatus",
            "CanaryResult",
            "CanaryVerdict",
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
            "focus_rows",
            "read_focus",
            "what_if_change_figure",
            "what_if_figure",
            "write_focus",
            "drift_plot",
            "drift_test",
            "fleet_basis",
            "fleet_mean",
            "fleet_totals",
            "grand_totals",
            "histogram_buckets",
            "mean_by_labels",
            "noise_fourth_cumulant",
            "noise_variance",
            "open_warehouse",
            "render_html",
            "render_fleet_table",
            "render_json",
            "render_table",
            "requests_by_route",
            "signal_totals",
            "snapshot",
        ]
    )
    for name in analytics.__all__:
        assert getattr(analytics, name) is not None
