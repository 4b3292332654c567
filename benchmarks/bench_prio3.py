"""Per-report cost of Prio3 from Python, next to the ingest's per-envelope floor.

For each aggregation task of the default policy, `REPORTS` reports (fresh nonces, a
measurement at the task's bound) go through the binding as each role runs them: the
client's shard, the leader's verify_init, the helper's verify_init plus the verifier
message (in DAP the helper combines the verifier shares), and verify_next (the leader's;
the helper's is the same call). Sizes: the public share, the leader's input share and
the helper's share as the client's `ReportSharer` seals it (a NaCl sealed box holding
the share and the report's identity).

The floor: what the ingest does for every envelope whatever it carries (see
`ingest._verify`): open the sealed box and verify the Ed25519 signature, on a typical
envelope, a simulated device's day under the default policy with the health and
performance tiers consented (one report per task below: checked), built and sealed by
the real client. Every figure is the median of `REPORTS` timed calls (time.perf_counter_ns)
after `WARMUP` untimed ones, in the same run.
"""

from __future__ import annotations

import base64
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from nacl.public import PrivateKey, SealedBox
from nacl.signing import VerifyKey

from benchmarks._fleet import ERRORS, LATENCY, REQUESTS, TOKENS
from client import MemoryTransport, Telemetry, TelemetryConfig
from client._shares import ReportSharer, task_vdaf
from fleetsim._simulation import FleetSpec, device_profiles, simulate_window
from policies import AggregationTask, Policy, aggregation_tasks, load_policy, task_context
from schemas import AppInfo, BatchResult, EnvelopeBatch, EnvelopeV1, SignedEnvelope, Tier

REPORTS = 300
WARMUP = 30
T = TypeVar("T")


def _timed(samples: list[int], fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)`, its duration appended to `samples` (ns)."""
    start = time.perf_counter_ns()
    out = fn(*args)
    samples.append(time.perf_counter_ns() - start)
    return out


def _us(samples: list[int]) -> float:
    return statistics.median(samples[WARMUP:]) / 1000


def _task_costs(task: AggregationTask, policy: Policy, sharer: ReportSharer) -> dict[str, float]:
    """Median µs per report of each role's step, and the report's sizes in bytes."""
    vdaf = task_vdaf(task)
    ctx, key = task_context(policy.content_hash, task.id), os.urandom(vdaf.verify_key_size)
    measurement = [0] * task.length
    measurement[0], measurement[-1] = task.bound - 1, 1  # at the bound
    steps: dict[str, list[int]] = {k: [] for k in ("shard", "leader", "helper", "next")}
    for _ in range(WARMUP + REPORTS):
        nonce = os.urandom(vdaf.nonce_size)
        public, leader, helper = _timed(steps["shard"], vdaf.shard, ctx, measurement, nonce)
        l_state, l_share = _timed(
            steps["leader"], vdaf.verify_init, key, ctx, 0, nonce, public, leader
        )
        start = time.perf_counter_ns()
        h_state, h_share = vdaf.verify_init(key, ctx, 1, nonce, public, helper)
        message = vdaf.verifier_shares_to_message(ctx, l_share, h_share)
        steps["helper"].append(time.perf_counter_ns() - start)
        _timed(steps["next"], vdaf.verify_next, ctx, 0, l_state, message)
        vdaf.verify_next(ctx, 1, h_state, message)  # the helper's output, untimed
    report = sharer.report(task, measurement, datetime(2026, 1, 1, tzinfo=UTC))
    out = {name: _us(samples) for name, samples in steps.items()}
    out |= {
        "public": len(report.public_share),
        "leader share": len(report.leader_share),
        "helper sealed": len(report.helper_share),
    }
    return out


def _typical_envelope(policy: Policy, work: Path) -> tuple[str, PrivateKey]:
    """One simulated device's day under `policy`, as the client seals it (base64)."""
    ingest_key = PrivateKey.generate()
    items: list[str] = []

    def accept(batch: EnvelopeBatch) -> BatchResult:
        items.extend(batch.envelopes)
        return BatchResult(accepted=len(batch.envelopes), rejected=0, results=[])

    day = timedelta(seconds=policy.window_seconds)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    now = [start + day / 2]
    telemetry = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="bench", version="1"),
            region="bench",
            policy=policy,
            ingest_public_key=bytes(ingest_key.public_key),
            transport=MemoryTransport(accept),
            state_dir=work,
            clock=lambda: now[0],
            mode="manual",
            fingerprint_key=b"bench fleet fingerprint key v1",
        )
    )
    telemetry.grant_consent(Tier.HEALTH)
    telemetry.grant_consent(Tier.PERFORMANCE)
    requests, errors = telemetry.counter(REQUESTS), telemetry.counter(ERRORS)
    latency, tokens = telemetry.histogram(LATENCY), telemetry.histogram(TOKENS)
    profile = device_profiles(FleetSpec(devices=1))[0]
    for e in simulate_window(profile, 0, 7, policy.window_seconds):
        requests.add(1, route=e.route, model=e.model)
        latency.record(e.latency_s, route=e.route, model=e.model)
        tokens.record(e.tokens, route=e.route, model=e.model)
        if e.failed:
            errors.add(1, route=e.route, model=e.model)
            try:
                raise RuntimeError("inference failed")
            except RuntimeError as exc:
                telemetry.record_exception(exc, route=e.route, model=e.model)
    now[0] = start + day + timedelta(minutes=1)
    telemetry.collect()
    telemetry.flush()
    telemetry.shutdown(carry_open_window=False)
    if len(items) != 1:
        raise AssertionError(f"expected one envelope for the day, got {len(items)}")
    return items[0], ingest_key


def _floor(
    item: str, ingest_key: PrivateKey, tasks: dict[str, AggregationTask]
) -> tuple[dict[str, float], int, int]:
    """Median µs of the sealed-box open and the Ed25519 verify; sealed and payload bytes."""
    sealed = base64.b64decode(item)
    box = SealedBox(ingest_key)
    signed = SignedEnvelope.model_validate_json(box.decrypt(sealed))
    reports = sorted(r.task for r in EnvelopeV1.model_validate_json(signed.payload).reports)
    if reports != sorted(tasks):
        raise AssertionError(f"the envelope's reports {reports} are not the policy's tasks")
    verify_key = VerifyKey(signed.public_key)
    steps: dict[str, list[int]] = {"open": [], "verify": []}
    for _ in range(WARMUP + REPORTS * 3):
        _timed(steps["open"], box.decrypt, sealed)
        _timed(steps["verify"], verify_key.verify, signed.payload, signed.signature)
    return {k: _us(v) for k, v in steps.items()}, len(sealed), len(signed.payload)


def main() -> int:
    """Print the per-report costs, the floor and their ratios (no targets)."""
    policy = load_policy()
    tasks = aggregation_tasks(policy)
    with tempfile.TemporaryDirectory() as tmp:
        item, ingest_key = _typical_envelope(policy, Path(tmp))
    floor, sealed_bytes, payload_bytes = _floor(item, ingest_key, tasks)
    per_envelope = floor["open"] + floor["verify"]
    helper_key = policy.aggregation.helper
    if helper_key is None:
        raise AssertionError("the default policy names no helper")
    sharer = ReportSharer(policy.content_hash, helper_key.public_key_bytes)
    costs = {task_id: _task_costs(task, policy, sharer) for task_id, task in tasks.items()}
    print(
        f"floor per envelope (a device's day, {len(tasks)} reports, {sealed_bytes:,} bytes sealed, "
        f"{payload_bytes:,} signed): sealed-box open {floor['open']:.1f} µs + Ed25519 verify "
        f"{floor['verify']:.1f} µs = {per_envelope:.1f} µs"
    )
    print(
        f"per report, median of {REPORTS} (µs; x = / the floor): shard on the client; "
        "leader verify_init; helper verify_init + message; verify_next"
    )
    width = max(len(t) for t in tasks) + 1
    print(
        f"{'task':<{width}}{'len':>4}{'bits':>5} |{'shard':>8}{'leader':>8}{'x':>6}{'helper':>8}"
        f"{'x':>6}{'next':>7}{'x':>6} |{'public':>7}{'leader':>8}{'sealed':>8}"
    )
    for task_id, c in costs.items():
        task = tasks[task_id]
        print(
            f"{task_id:<{width}}{task.length:>4}{task.bits:>5} |"
            f"{c['shard']:>8.1f}{c['leader']:>8.1f}"
            f"{c['leader'] / per_envelope:>6.2f}{c['helper']:>8.1f}"
            f"{c['helper'] / per_envelope:>6.2f}{c['next']:>7.1f}"
            f"{c['next'] / per_envelope:>6.2f} |{c['public']:>7,.0f}{c['leader share']:>8,.0f}"
            f"{c['helper sealed']:>8,.0f}"
        )
    total = {k: sum(c[k] for c in costs.values()) for k in next(iter(costs.values()))}
    print(
        f"{f'all {len(costs)} tasks (one device-day)':<{width + 9}} |{total['shard']:>8.1f}"
        f"{total['leader']:>8.1f}{total['leader'] / per_envelope:>6.2f}{total['helper']:>8.1f}"
        f"{total['helper'] / per_envelope:>6.2f}{total['next']:>7.1f}"
        f"{total['next'] / per_envelope:>6.2f} |{total['public']:>7,.0f}"
        f"{total['leader share']:>8,.0f}{total['helper sealed']:>8,.0f}"
    )
    leader, helper = total["leader"] + total["next"], total["helper"] + total["next"]
    print(
        f"a device-day's Prio3 verification: the leader's {leader:.0f} µs "
        f"({leader / per_envelope:.1f}x the envelope floor), the helper's {helper:.0f} µs "
        f"({helper / per_envelope:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
