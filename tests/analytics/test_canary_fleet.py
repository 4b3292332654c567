"""End to end: simulated fleets through the real pipeline (client -> HTTP ingest -> sink ->
leader and helper -> DuckDB), then the canary verdict read from the warehouse file.

The simulator's canary (`fleetsim._simulation.MODEL_CANARY`) is 30% slower on the local
route and fails 4% of its requests there (the stable version 0.5%). The four metrics
(latency, error rate, exceptions per request, tokens) are all judged: every signal
carries the route and model labels. Evidence per route is what decides the fleet size.
At the default policy's budget one day of the demo's 4,000 devices gives the local
route's latency ratio a 90% interval of about ±12% (docs/analytics.md), enough to roll
back a 30% regression but not to promote against +10%. To keep these runs to hundreds
of devices, the test policy releases every consented signal as secure aggregates at
the largest budget a signal may have on what the verdict reads: epsilon 10 for the
latency and token histograms (per-cell counts and sums 5 each, against 0.45 and 0.15
by default), the errors' and exceptions' cells (0.2 and 0.15 by default), and 5 for the
requests' cells (the rates' denominators); and its exception signal counts one
fingerprint bucket (the simulated app has one failure; each of 16 buckets would add its
noise to every rate). A secure aggregate's noise does not depend on the fleet's size,
so N devices here carry the latency evidence of about 11 N devices at the default
budget. The verdict's rules are the default policy's `canary:` section, unchanged but
for the routes judged in the promote case: the edge route's latency (0.4 s a request)
is small against the noise of a sum, and bounding it within +10% would take several
times these fleets.

A rate's interval carries the binomial sampling of its requests as well as the noise:
in one promote run (800 devices, half canary, about 11,000 cloud requests a side) the
cloud route's error and exception rates had 90% half-widths of 0.4 percentage points
(estimates -0.04 and +0.10), its tokens 3.8% (estimate -4.1%), the local route's
narrower. The usage is seeded, so between runs only the DP noise moves the estimates:
by about 0.06 points (errors), 0.1 (exceptions) and 1.4% (tokens), standard
deviations, several of them short of the thresholds (+1 point, +10%).

Measured (90% intervals): at 300 devices the local route's latency ratio has a standard
error of about 5% (a +30% regression was rolled back with its interval's low end at
+17%); at 400, about 4%, so the low end falls below +10% with probability about 1e-4.
At 600 devices the local and cloud routes' were about 2.3% (90% half-widths about 4%,
and one run in two held on a cloud estimate of +5.5%, an excursion of 2.2 standard
errors); at 800, about 1.7%, so a canary without regression has an interval's high end
past +10% only on an excursion of four standard errors.
"""

from __future__ import annotations

import polars as pl
import pytest

import fleetsim._simulation as simulation
from analytics import CanaryResult, CanaryVerdict, canary_verdict, open_warehouse
from fleetsim import FleetRun, FleetSpec, run_fleet
from fleetsim._demo import cell_means_truth
from fleetsim._simulation import MODEL_CANARY, MODEL_STABLE
from policies import Policy, load_policy

LATENCY = "gen_ai.client.operation.duration"
TOKENS = "gen_ai.client.token.usage"


# Per signal the verdict reads: (epsilon, parts), every part a per-cell one.
_BUDGET: dict[str, tuple[float, dict[str, float]]] = {
    LATENCY: (10.0, {"counts": 5.0, "sums": 5.0}),
    TOKENS: (10.0, {"counts": 5.0, "sums": 5.0}),
    "inference.errors": (10.0, {"cells": 10.0}),
    "app.exceptions": (10.0, {"cells": 10.0}),
    "inference.requests": (5.0, {"cells": 5.0}),
}


def _policy(routes: list[str] | None = None) -> Policy:
    data = load_policy().model_dump(mode="json")
    for name, (epsilon, parts) in _BUDGET.items():
        data["signals"][name].update(epsilon=epsilon, parts=parts)
    data["signals"]["app.exceptions"]["attributes"]["fingerprint"] = ["b00"]
    # The signals' epsilons add up to 45 plus the content signal's (never consented).
    data["privacy"]["daily_epsilon"] = 46.0
    data["canary"]["routes"] = routes
    return Policy.model_validate(data)


def _verdict(run: FleetRun, policy: Policy) -> CanaryResult:
    conn = open_warehouse(run.db)
    try:
        return canary_verdict(conn, policy.canary)
    finally:
        conn.close()


def _true_effects(run: FleetRun) -> dict[str, float]:
    means = cell_means_truth(run.truth, LATENCY, ("model", "route"))
    return {
        route: means[(MODEL_CANARY, route)] / means[(MODEL_STABLE, route)] - 1.0
        for route in simulation.ROUTES
    }


@pytest.fixture(scope="module")
def regressed(tmp_path_factory: pytest.TempPathFactory) -> tuple[FleetRun, CanaryResult]:
    policy = _policy()
    db = tmp_path_factory.mktemp("canary") / "regressed.duckdb"
    run = run_fleet(FleetSpec(devices=400, windows=1, canary_share=0.5, seed=11), db, policy=policy)
    return run, _verdict(run, policy)


@pytest.fixture(scope="module")
def unchanged(tmp_path_factory: pytest.TempPathFactory) -> tuple[FleetRun, CanaryResult]:
    # The same simulated app with the canary's regression taken out: its local route
    # as fast and as reliable as the stable version's.
    policy = _policy(routes=["local", "cloud"])
    db = tmp_path_factory.mktemp("canary") / "unchanged.duckdb"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulation, "_CANARY_LOCAL_SLOWDOWN", 1.0)
        patch.setattr(simulation, "_CANARY_LOCAL_FAILURE", simulation._FAILURE_RATE["local"])
        run = run_fleet(
            FleetSpec(devices=800, windows=1, canary_share=0.5, seed=12), db, policy=policy
        )
    return run, _verdict(run, policy)


def test_the_demos_canary_is_rolled_back_on_the_local_route(
    regressed: tuple[FleetRun, CanaryResult],
) -> None:
    run, result = regressed
    verdict = result.verdict
    assert (verdict.canary, verdict.baseline) == (MODEL_CANARY, MODEL_STABLE)
    assert verdict.verdict == "rollback"
    local = next(r for r in verdict.routes if r.route == "local")
    assert local.verdict == "rollback"
    latency = next(m for m in local.metrics if m.metric == "latency")
    assert latency.status == "regression"
    assert latency.ci_low is not None
    assert latency.estimate is not None
    assert latency.ci_low > 0.10
    # The simulator's truth (its clamped means): about +30%. The estimate's standard
    # error is about 4%; 0.15 is more than three of them.
    truth = _true_effects(run)["local"]
    assert 0.2 < truth < 0.4
    assert abs(latency.estimate - truth) < 0.15
    # The canary's 4% failures against 0.5%: +3.5 points, also judged a regression, by
    # the error rate and by the exceptions the failures raise.
    failures = {m.metric: m for m in local.metrics if m.metric in ("error_rate", "exceptions")}
    for metric in failures.values():
        assert metric.status == "regression", metric.reason
        assert metric.estimate is not None
        assert abs(metric.estimate - 0.035) < 0.01
    tokens = next(m for m in local.metrics if m.metric == "tokens")
    assert tokens.status in ("pass", "inconclusive")  # same tokens per request
    assert all(m.status != "unavailable" for r in verdict.routes for m in r.metrics)


def test_a_canary_without_regression_is_promoted(
    unchanged: tuple[FleetRun, CanaryResult],
) -> None:
    run, result = unchanged
    verdict = result.verdict
    assert verdict.verdict == "promote", verdict.reasons
    assert [r.route for r in verdict.routes] == ["local", "cloud"]
    # Every metric is judged and passes on both routes.
    assert set(result.evidence["metric"]) == {"latency", "error_rate", "exceptions", "tokens"}
    assert set(result.evidence["status"]) == {"pass"}
    latency = result.evidence.filter(pl.col("metric") == "latency")
    truth = _true_effects(run)
    for row in latency.iter_rows(named=True):
        assert abs(truth[row["route"]]) < 0.05
        assert row["ci_high"] < 0.10
    # What a rollout system reads back is the verdict itself.
    assert CanaryVerdict.model_validate_json(verdict.model_dump_json()) == verdict
