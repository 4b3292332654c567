"""Utility at 1,000 to 100,000 devices: local DP vs Prio3 secure aggregation, side by side.

Policy: the default (`policies/default.yaml`: one-day windows, 4 epsilon per device per
day) against its local variant (`privacy_model: local` on every signal: the same bounds
and epsilons; the aggregate model's task parts and cell caps dropped, see
`benchmarks._variants`). Every figure is printed again with every signal's epsilon (and
its parts) scaled by 1/4 (1 per device per day), without targets.

Data: the demo's simulated fleet drawn in bulk (`benchmarks._fleet`), `DAYS` one-day
windows per fleet size, each device's day clamped as the client clamps it under each
model: aggregate, a histogram's per-cell parts scaled down as a whole at the cell caps
and its totals clamped at the totals' bounds; local, at the totals' bounds.

Noise, per trial:
- aggregate: per task of the policy (`policies.aggregation_tasks`: its part's epsilon,
  bits and resolution), the fleet sum of the clamped measurements plus two discrete
  Laplace draws per vector entry (leader and helper) at the task's scale, from OpenDP
  with the aggregators' construction (`make_laplace` on an i64 vector, the smallest scale
  whose map at d_in = the task's sensitivity, 2 x its bound or its bound for a total,
  is at most its epsilon).
  That the fleet sum is what Prio3 reveals is checked once, at 1,000 devices, through
  the binding, for every task.
- local: the client's `release_counter` / `release_histogram` are the mechanism: each
  device adds discrete Laplace noise to every count (a histogram: every bucket) and
  Laplace noise to every cell's sum. An OpenDP draw costs 6 to 19 us, so the sum of a
  fleet's draws is drawn at once from its exact law (discrete Laplace is the difference
  of two geometrics, so a sum of D of them is a difference of two negative binomials;
  Laplace, of two gammas) at the scales the client's functions report. Those functions
  are run on every device of a 1,000-device day: scales, noise variance and clamping.

Figures, as analytics reads them: a fleet total from the signal's total task (a
counter's `total`, a histogram's `total_events` and `total_sum`: one entry, two draws)
where the policy has one, else from its cells added (two draws per cell); a (model x
route) cell's count from the requests counter's cells; a cell's mean latency from the
duration's per-cell `sums` / `counts` (at the cell caps, which keep every cell's mean).
Under the local model every figure adds cells (the local policy releases no total).
Relative errors of a day's figure over the trials (a trial: a simulated day with one
noise draw). Per model: `error`, RMS against the unclamped truth (clamping bias counts:
the targets use it); `noise`, RMS of the noise alone (against the clamped input);
`analytic`, the noise model's (delta method for means); `bias`, the mean clamping bias.
`ratio`: local noise / aggregate noise, measured and analytic. Near sqrt(devices/2)
where both models add noise at the same scale per cell (a counter's cells, at the same
epsilon); elsewhere the two release different things: a total task spends its own part
of the epsilon on one entry at the totals' bound, the per-cell parts theirs at the cell
caps, while a local histogram releases 15 buckets per cell at half its epsilon (its
`sum_share`) and its sums at the other half, at the totals' bounds. Where a mean's
count is about as noisy as it is large (local model), the ratio's errors are unbounded
and the delta method does not hold.

Canary: is the canary (@1.1) slower than the stable model on the local route? A
one-sided test at ALPHA on the difference of the two cells' means (in Fieller's form,
see `_canary`), its threshold from the noise model: the exact law of the statistic's
noise (a few discrete Laplace draws per cell: heavy-tailed; a normal threshold with the
same variance gives about twice the false alarms designed). The trials are simulated
days, each with several independent noise draws (`DRAWS`): detection on the simulator's
days (canary 1.3x slower), false alarms on the same days with a canary that is not
slower; Clopper-Pearson 95% intervals.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from benchmarks._canary import canary_test, clopper_pearson
from benchmarks._client_check import check_clients
from benchmarks._day_sums import simulate_days
from benchmarks._figures import MEAN_MIN_SHARE, error, figures, series
from benchmarks._fleet import LATENCY, TOKENS, Layout
from benchmarks._releases import CANARY_PARTS, HISTOGRAMS, Part, aggregate_parts, local_parts
from benchmarks._types import FloatArray
from benchmarks._variants import local_variant, scaled
from policies import AggregationTask, HistogramSignal, Policy, aggregation_tasks, load_policy

DAYS = {1_000: 400, 10_000: 300, 100_000: 16}
TARGET_DEVICES = 10_000
MAX_DAILY_EPSILON = 4.0
EPSILON_SCALES = (1.0, 0.25)  # 4, then 1 epsilon per device per day
SEED = 2026
CHECK_DEVICES = 1_000
# Targets: at TARGET_DEVICES, default policy, aggregate model.
# (TOTAL_TARGET, COUNT_TARGET, MEAN_TARGET, MEAN_MIN_SHARE: in `benchmarks._figures`.)
DETECT_TARGET, ALARM_TARGET = 0.95, 0.01
# The test's false-alarm rate by design: half the target, so that the rate measured over
# the canary trials meets the target unless the noise model is wrong.
ALPHA = 0.005
# Noise draws per simulated day: for the figures (100,000 devices: too few days for an RMS
# otherwise) and for the canary test (a rate near 1% needs thousands of trials). The noise
# is nearly all of a day's error (the canary statistic's sampling spread is about 1% of its
# variance at 10,000 devices), so a day's draws are nearly independent trials.
DRAWS = {1_000: (1, 3), 10_000: (1, 10), 100_000: (20, 63)}
# The canary's expected rates are printed where the count's noise sd is under this share of
# the count (the noise law is the statistic's to first order only).
LINEAR_MAX_NOISE = 0.2
# Each job simulates about this many device-days (jobs run on two worker processes).
_JOB_DEVICE_DAYS = 800_000


def _submit(pool: ProcessPoolExecutor) -> dict[int, list[Future[dict[str, FloatArray]]]]:
    jobs: dict[int, list[Future[dict[str, FloatArray]]]] = {}
    for devices, days in sorted(DAYS.items(), key=lambda kv: -kv[0] * kv[1]):
        step = max(1, _JOB_DEVICE_DAYS // devices)
        jobs[devices] = [
            pool.submit(simulate_days, devices, first, min(step, days - first), SEED)
            for first in range(0, days, step)
        ]
    return jobs


def _gather(futures: list[Future[dict[str, FloatArray]]]) -> dict[str, FloatArray]:
    parts = [f.result() for f in futures]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _pct(x: float) -> str:
    if not math.isfinite(x) or abs(x) >= 100:
        return ">9999%" if x > 0 else "<-9999%"
    return f"{x:.1%}" if abs(x) < 10 else f"{x:.0%}"


def _times(x: float) -> str:
    return f"{x:.1f}" if x < 1000 else f"{x:.0f}" if x < 1e6 else ">1e6"


def _maybe(x: float, spec: str) -> str:
    return "n/a" if math.isnan(x) else format(x, spec)


def _verdict(met: bool) -> str:
    return "PASS" if met else "FAIL"


_HEADER = (
    f"{'figure':<28}{'devices':>8}{'trials':>7} |{'aggregate':>10}{'± MC':>7}{'noise':>8}"
    f"{'analytic':>9}{'bias':>7} |{'local':>8}{'noise':>8}{'analytic':>9}{'bias':>7} |"
    f"{'ratio':>7}{'analytic':>9}{'√(D/2)':>7} | target"
)


def _tile(sums: dict[str, FloatArray], draws: int) -> dict[str, FloatArray]:
    return {k: np.tile(v, (draws, 1)) for k, v in sums.items()} if draws > 1 else sums


class _Level:
    """One epsilon level: every fleet's releases under both models, per trial (a simulated
    day with one noise draw), for the figures and for the canary test."""

    def __init__(self, policy: Policy, factor: float, results: dict[int, dict[str, FloatArray]]):
        self.aggregate = scaled(policy, factor)
        self.local = local_variant(self.aggregate)
        rng = np.random.default_rng((SEED, round(factor * 1000)))
        self.sums: dict[int, dict[str, FloatArray]] = {}
        self.parts: dict[int, tuple[dict[str, Part], dict[str, Part]]] = {}
        self.canary: dict[int, tuple[dict[str, Part], dict[str, Part]]] = {}
        for devices, sums in results.items():
            figure_draws, canary_draws = DRAWS[devices]
            self.sums[devices] = tiled = _tile(sums, figure_draws)
            self.parts[devices] = (
                aggregate_parts(self.aggregate, tiled),
                local_parts(self.local, tiled, devices, rng),
            )
            tiled = _tile(sums, canary_draws)
            self.canary[devices] = (
                aggregate_parts(self.aggregate, tiled, CANARY_PARTS),
                local_parts(self.local, tiled, devices, rng, CANARY_PARTS),
            )


def _print_level(level: _Level, layout: Layout, judged: bool) -> list[tuple[str, bool]]:
    """Print one epsilon level's tables; return its (target, met) at TARGET_DEVICES."""
    verdicts: list[tuple[str, bool]] = []
    every = figures(layout, level.sums[TARGET_DEVICES])
    released = level.parts[TARGET_DEVICES][0]
    totals = [f for f in every if f.name.startswith("total ")]
    tasks = [f.name[6:] for f in totals if f.total in released]
    cells = [f.name[6:] for f in totals if f.total not in released]
    print(
        f"aggregate fleet totals from the total tasks: {', '.join(tasks) or 'none'}; from the "
        f"cells added: {', '.join(cells) or 'none'} (local: every total from the cells added)"
    )
    print(_HEADER)
    for figure in every:
        for devices, sums in level.sums.items():
            agg, loc = (error(*series(figure, p, sums)) for p in level.parts[devices])
            first = devices == min(level.sums)
            label = figure.name if first else ""
            if figure.mean and first:
                label += f" ({figure.share:.0%})"
            target = ""
            if devices == TARGET_DEVICES:
                if figure.target is None:
                    target = f"- (under {MEAN_MIN_SHARE:.0%} of events)"
                elif judged:
                    met = agg.rms <= figure.target
                    target = f"{_verdict(met)} (<= {figure.target:.0%})"
                    verdicts.append((f"{figure.name}: {agg.rms:.2%} <= {figure.target:.0%}", met))
            print(
                f"{label:<28}{devices:>8,}{len(sums['latency.events']):>7,} |"
                f"{_pct(agg.rms):>10}{_pct(agg.se):>7}{_pct(agg.noise):>8}"
                f"{_pct(agg.analytic):>9}{_pct(agg.bias):>7} |{_pct(loc.rms):>8}"
                f"{_pct(loc.noise):>8}{_pct(loc.analytic):>9}{_pct(loc.bias):>7} |"
                f"{_times(loc.noise / agg.noise):>7}{_times(loc.analytic / agg.analytic):>9}"
                f"{math.sqrt(devices / 2):>7.1f} | {target}"
            )
    print(
        f"canary, local route, mean latency @1.1 > @1.0? one-sided test at {ALPHA:.1%} against the "
        "noise's exact law (expected: that law at the clamped values)"
    )
    for devices in level.canary:
        for model, parts in zip(("aggregate", "local"), level.canary[devices], strict=True):
            hits, n, power = canary_test(parts, layout, "latency", ALPHA, LINEAR_MAX_NOISE)
            alarms, _, alpha = canary_test(parts, layout, "latency_h0", ALPHA, LINEAR_MAX_NOISE)
            (dl, dh), (al, ah) = clopper_pearson(hits, n), clopper_pearson(alarms, n)
            target = ""
            if judged and devices == TARGET_DEVICES and model == "aggregate":
                found, quiet = hits / n >= DETECT_TARGET, alarms / n <= ALARM_TARGET
                target = f"{_verdict(found)} (>= {DETECT_TARGET:.0%}) / {_verdict(quiet)} (<= 1%)"
                verdicts += [
                    (f"canary detected in {hits / n:.2%} of trials >= {DETECT_TARGET:.0%}", found),
                    (f"canary false alarms in {alarms / n:.2%} of trials <= 1%", quiet),
                ]
            print(
                f"  {devices:>7,} {model:<9} detected {hits:>5,}/{n:,} {hits / n:6.1%} "
                f"[{dl:.1%}, {dh:.1%}] (expected {_maybe(power, '5.1%')}); false alarms "
                f"{alarms:>3}/{n:,} {alarms / n:5.2%} [{al:.2%}, {ah:.2%}] (expected "
                f"{_maybe(alpha, '.2%')})  {target}"
            )
    return verdicts


def _print_fleets(policy: Policy, results: dict[int, dict[str, FloatArray]]) -> None:
    print(
        "simulated fleet: the demo's (fleetsim._simulation) in the policy's one-day windows "
        "(its six-hour rates x 4); a trial: a simulated day with one noise draw"
    )
    bounds = []
    for h, name in (("duration", LATENCY), ("tokens", TOKENS)):
        signal = policy.signals[name]
        assert isinstance(signal, HistogramSignal)
        bounds.append(
            f"{h}: cell caps {signal.cell_events_cap} events / {signal.cell_sum_cap:g} "
            f"{signal.unit}, totals' bounds {signal.max_events_per_window} events / "
            f"{signal.sum_cap:g} {signal.unit}"
        )
    print(f"device-days clamped (over a bound's events or sum; {'; '.join(bounds)}):")
    for devices, sums in results.items():
        clamped = {h: sums[f"{h}.clamped_devices"].mean(axis=0) / devices for h in HISTOGRAMS}
        requests = float(sums["latency.events"].sum(axis=1).mean()) / devices
        figure_draws, canary_draws = DRAWS[devices]
        print(
            f"  {devices:>7,} devices x {DAYS[devices]} days ({figure_draws} and {canary_draws} "
            f"noise draws a day: figures, canary): {requests:.1f} requests per device-day; "
            + ", ".join(
                f"{h} {clamped[p][0]:.1%} at the cell caps, {clamped[p][1]:.3%} at the totals'"
                for h, p in (("duration", "latency"), ("tokens", "tokens"))
            )
        )


def _bound(task: AggregationTask) -> str:
    if task.part in ("sums", "total_sum"):
        return f"{task.bound * task.resolution:.6g} {task.unit}"
    return f"{task.bound}"


def _print_tasks(policy: Policy) -> None:
    """The aggregate model's tasks: each part's epsilon and bound (sensitivity 2 x bound,
    bound for a total)."""
    by_signal: dict[str, list[AggregationTask]] = {}
    for task in aggregation_tasks(policy).values():
        by_signal.setdefault(task.signal, []).append(task)
    print("aggregate tasks: part epsilon <= bound (noise: two draws per entry at its sensitivity)")
    for signal, tasks in by_signal.items():
        parts = ", ".join(f"{t.part} {t.epsilon:.4g} <= {_bound(t)}" for t in tasks)
        print(f"  {signal}: {parts}")


def main() -> int:
    """Print the tables at 4 and 1 epsilon per device per day; non-zero if a target at 4
    fails (or the bulk path disagrees with the client's functions or with Prio3)."""
    started = time.monotonic()
    policy = load_policy()
    layout = Layout(policy)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = _submit(pool)  # the checks run while two workers simulate
        check_lines, problems = check_clients(
            policy, local_variant(policy), layout, CHECK_DEVICES, SEED
        )
        results = {devices: _gather(jobs[devices]) for devices in sorted(DAYS)}
    simulated = time.monotonic() - started
    _print_fleets(policy, results)
    for line in check_lines:
        print(line)
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    planned = policy.planned_daily_epsilon
    verdicts = [
        (
            f"planned_daily_epsilon {planned:g} <= {MAX_DAILY_EPSILON:g}",
            planned <= MAX_DAILY_EPSILON,
        )
    ]
    for factor in EPSILON_SCALES:
        level = _Level(policy, factor, results)
        judged = factor == 1.0
        print(
            f"\n== epsilon {level.aggregate.planned_daily_epsilon:g} per device per day"
            + ("" if judged else " (every signal's epsilon x 1/4; no targets)")
        )
        _print_tasks(level.aggregate)
        verdicts += _print_level(level, layout, judged)
    print(
        f"\ntargets at {TARGET_DEVICES:,} devices, {planned:g} epsilon per device-day, aggregate:"
    )
    for what, met in verdicts:
        print(f"  {_verdict(met)}  {what}")
    failed = sum(not met for _, met in verdicts)
    elapsed = time.monotonic() - started
    print(
        f"{len(verdicts) - failed} of {len(verdicts)} targets met "
        f"({elapsed:.0f} s, of which checks and simulation {simulated:.0f} s)"
    )
    return 1 if failed or problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
