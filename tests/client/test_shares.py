"""The client's aggregate model: windows leave as Prio3 reports that verify and sum right."""

from __future__ import annotations

import base64
import os
import statistics
from datetime import timedelta
from pathlib import Path

import pytest
from nacl.public import PrivateKey, SealedBox

from client import MemoryTransport, Telemetry, TelemetryConfig
from client._aggregation import HistogramSnapshot
from client._errors import ConfigError
from client._shares import clamp_histogram, quantize_sums, task_vdaf
from policies import (
    AggregationTask,
    CounterSignal,
    HelperEndpoint,
    HistogramSignal,
    Policy,
    aggregation_tasks,
    load_policy,
    task_context,
)
from schemas import AppInfo, EnvelopeV1, HelperShareV1, PrioReport, Tier
from tests.client.conftest import T0, FakeClock, MemoryIngest

HELPER = PrivateKey.generate()
ROUTES = ["local", "cloud"]
LATENCY = HistogramSignal(
    tier=Tier.PERFORMANCE,
    unit="s",
    attributes={"route": ROUTES},
    buckets=[0.5, 1.0, 2.0],
    max_events_per_window=7,
    value_range=(0.0, 30.0),
    max_sum_per_window=8.0,
    epsilon=1.0,
)
_DEFAULT = load_policy()
POLICY: Policy = _DEFAULT.model_copy(
    update={
        "window_seconds": 86_400,
        "fingerprints": None,
        # Their rules name signals of the full catalogue.
        "canary": None,
        "cost": None,
        "otel": None,
        "signals": {
            "requests": CounterSignal(
                tier=Tier.PERFORMANCE, attributes={"route": ROUTES}, max_per_window=15, epsilon=1.0
            ),
            "errors": CounterSignal(tier=Tier.HEALTH, max_per_window=3, epsilon=0.5),
            "latency": LATENCY,
        },
        "aggregation": _DEFAULT.aggregation.model_copy(
            update={
                "helper": HelperEndpoint(
                    url="http://127.0.0.1:9",
                    public_key=base64.b64encode(bytes(HELPER.public_key)).decode(),
                )
            }
        ),
    }
)
VERIFY_KEY = os.urandom(32)


def _telemetry(tmp_path: Path, ingest: MemoryIngest, clock: FakeClock, **kw: object) -> Telemetry:
    tel = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=kw.pop("policy", POLICY),
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
            retry_backoff=0.0,
            **kw,  # type: ignore[arg-type]
        )
    )
    tel.grant_consent(Tier.HEALTH)
    tel.grant_consent(Tier.PERFORMANCE)
    return tel


def _aggregate(task: AggregationTask, reports: list[PrioReport], policy_hash: str) -> list[int]:
    """Both aggregators' work on `reports` (no noise): the sum they reveal."""
    vdaf = task_vdaf(task)
    ctx = task_context(policy_hash, task.id)
    leader_out, helper_out = [], []
    for r in reports:
        opened = HelperShareV1.model_validate_json(SealedBox(HELPER).decrypt(r.helper_share))
        assert (opened.task, opened.report_id, opened.policy_hash) == (
            r.task,
            r.report_id,
            policy_hash,
        )
        s0, v0 = vdaf.verify_init(VERIFY_KEY, ctx, 0, r.report_id, r.public_share, r.leader_share)
        s1, v1 = vdaf.verify_init(VERIFY_KEY, ctx, 1, r.report_id, r.public_share, opened.share)
        message = vdaf.verifier_shares_to_message(ctx, v0, v1)
        leader_out.append(vdaf.verify_next(ctx, 0, s0, message))
        helper_out.append(vdaf.verify_next(ctx, 1, s1, message))
    return vdaf.unshard(vdaf.aggregate(0, leader_out), vdaf.aggregate(1, helper_out), len(reports))


def _reports(envelope: EnvelopeV1, task: str) -> list[PrioReport]:
    return [r for r in envelope.reports if r.task == task]


def test_a_window_leaves_as_reports_that_verify_and_sum_to_the_clamped_truth(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    tasks = aggregation_tasks(POLICY)
    tel = _telemetry(tmp_path, ingest, clock)
    requests, latency = tel.counter("requests"), tel.histogram("latency")
    for _ in range(20):  # over the bound of 15: clamped, in proportion
        requests.add(1, route="local")
    requests.add(5, route="cloud")
    for value in (0.2, 0.7, 1.5):
        latency.record(value, route="local")
    latency.record(3.0, route="cloud")
    (window,) = tel.collect_with_truth(clock.advance(hours=24))
    assert tel.flush()
    (envelope,) = ingest.envelopes
    assert envelope.aggregates == []  # nothing released locally: all shared
    assert sorted(r.task for r in envelope.reports) == sorted(tasks)
    h = POLICY.content_hash
    assert _aggregate(tasks["requests/cells"], _reports(envelope, "requests/cells"), h) == [
        12,
        3,
        0,
    ]
    buckets = _aggregate(tasks["latency/buckets"], _reports(envelope, "latency/buckets"), h)
    assert buckets == [1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    counts = _aggregate(tasks["latency/counts"], _reports(envelope, "latency/counts"), h)
    assert counts == [3, 1, 0]
    sums_task = tasks["latency/sums"]
    sums = _aggregate(sums_task, _reports(envelope, "latency/sums"), h)
    assert sums[0] * sums_task.resolution == pytest.approx(2.4, abs=sums_task.resolution)
    assert sums[1] * sums_task.resolution == pytest.approx(3.0, abs=sums_task.resolution)
    # The truth the simulator reads is the clamped measurement that was shared.
    counter_truth = [t for t in window.truth if t.signal == "requests"]
    assert [t.value for t in counter_truth] == [12, 3, 0]  # type: ignore[union-attr]


def test_the_ledger_is_charged_each_aggregate_signal_once_per_window(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    tel = _telemetry(tmp_path, ingest, clock)
    tel.collect(clock.advance(hours=24))
    spent_day, spent_life = tel.privacy_spent(T0)  # charged to the window's day
    assert spent_day == pytest.approx(sum(s.epsilon for s in POLICY.signals.values()))
    assert spent_life == spent_day


def test_no_plaintext_measurement_leaves_the_device(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    tel = _telemetry(tmp_path, ingest, clock)
    tel.counter("requests").add(13, route="cloud")
    tel.collect(clock.advance(hours=24))
    assert tel.flush()
    (envelope,) = ingest.envelopes
    (report,) = _reports(envelope, "requests/cells")
    # The helper's share is sealed to the helper: the ingest cannot open it.
    with pytest.raises(Exception, match=r"[Dd]ecrypt"):
        SealedBox(ingest.private_key).decrypt(report.helper_share)
    # The leader's share of [0, 13, 0] is uniformly random field elements: the value's
    # 16-byte little-endian field encoding appears nowhere in the envelope.
    encoded_13 = (13).to_bytes(16, "little")
    raw = envelope.model_dump_json().encode() + report.leader_share + report.public_share
    assert encoded_13 not in raw


def test_a_restart_within_a_day_carries_the_open_window_into_one_report(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    tasks = aggregation_tasks(POLICY)
    clock.now = T0.replace(hour=8)
    first = _telemetry(tmp_path, ingest, clock)
    first.counter("requests").add(2, route="local")
    first.histogram("latency").record(0.7, route="cloud")
    first.shutdown()  # mid-window: its cells are carried, nothing is released
    assert first.flush()
    assert ingest.envelopes == []  # nothing shared yet...
    assert first.privacy_spent(T0)[0] == 0.0  # ...and nothing charged
    carried = (tmp_path / "state" / "spool" / "open_window.sealed").read_bytes()
    assert b"requests" not in carried  # encrypted at rest, like the spool

    clock.advance(hours=2)
    again = _telemetry(tmp_path, ingest, clock)
    again.counter("requests").add(3, route="local")
    (window,) = again.collect(clock.advance(hours=24))
    # The whole aligned window, both runs' cells: one contribution to the batch.
    day = T0.replace(hour=0)
    assert (window.window_start, window.window_end) == (day, day + timedelta(days=1))
    h = POLICY.content_hash
    assert _aggregate(tasks["requests/cells"], _reports(window, "requests/cells"), h) == [5, 0, 0]
    assert _aggregate(tasks["latency/counts"], _reports(window, "latency/counts"), h) == [0, 1, 0]
    spent = sum(s.epsilon for s in POLICY.signals.values())
    assert again.privacy_spent(T0)[0] == pytest.approx(spent)  # charged once, that day


def test_a_restart_after_the_day_ended_reports_the_carried_window_late_in_its_batch(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    tasks = aggregation_tasks(POLICY)
    day = T0.replace(hour=0)
    clock.now = day.replace(hour=8)
    first = _telemetry(tmp_path, ingest, clock)
    first.counter("requests").add(2, route="local")
    first.shutdown()

    clock.now = day + timedelta(days=1, hours=10)
    again = _telemetry(tmp_path, ingest, clock)
    again.counter("requests").add(3, route="cloud")  # today's: not in the late window
    (late,) = again.collect(clock.now)
    assert (late.window_start, late.window_end) == (day, day + timedelta(days=1))
    assert late.sent_at == clock.now
    h = POLICY.content_hash
    assert _aggregate(tasks["requests/cells"], _reports(late, "requests/cells"), h) == [2, 0, 0]
    spent = sum(s.epsilon for s in POLICY.signals.values())
    assert again.privacy_spent(day)[0] == pytest.approx(spent)  # charged to its day
    # Collected a day after the late release (which the last 24 real hours count).
    (today,) = again.collect(clock.advance(hours=24))
    assert today.window_start == day + timedelta(days=1)
    assert _aggregate(tasks["requests/cells"], _reports(today, "requests/cells"), h) == [0, 3, 0]


def test_a_late_window_of_a_batch_already_reported_sends_no_reports(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    day = T0.replace(hour=0)
    clock.now = day.replace(hour=8)
    first = _telemetry(tmp_path, ingest, clock)
    first._state.next_sequence(day, reported_batch=day)  # as if its reports had gone
    first.counter("requests").add(2, route="local")
    first.shutdown()
    clock.now = day + timedelta(days=1, hours=10)
    again = _telemetry(tmp_path, ingest, clock)
    (late,) = again.collect(clock.now)
    assert late.window_start == day
    assert late.reports == []
    assert again.dropped()["batch_already_reported"] == len(POLICY.signals)
    assert again.privacy_spent(day)[0] == 0.0


def test_carried_cells_of_another_policy_are_discarded_and_counted(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    clock.now = T0.replace(hour=8)
    first = _telemetry(tmp_path, ingest, clock)
    first.counter("requests").add(2, route="local")
    first.shutdown()
    changed = POLICY.model_copy(
        update={"aggregation": POLICY.aggregation.model_copy(update={"min_batch_size": 50})}
    )
    again = _telemetry(tmp_path, ingest, clock, policy=changed)
    assert again.dropped()["carried_discarded"] == 1


def test_a_batch_already_reported_gets_no_second_report_and_no_charge(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    tel = _telemetry(tmp_path, ingest, clock)
    day = T0.replace(hour=0)
    # As if an earlier run had sent this day's reports already.
    tel._state.next_sequence(day, reported_batch=day)
    tel.counter("requests").add(2, route="local")
    (window,) = tel.collect(clock.advance(hours=24))
    assert window.reports == []
    assert tel.dropped()["batch_already_reported"] == len(POLICY.signals)
    assert tel.privacy_spent(T0)[0] == 0.0


def test_revoking_a_tier_strips_its_spooled_reports(tmp_path: Path, clock: FakeClock) -> None:
    down = MemoryIngest()
    tel = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=POLICY,
            ingest_public_key=down.public_key,
            transport=MemoryTransport(down.handle, lambda _request: None),
            state_dir=tmp_path / "state",
            clock=clock,
            mode="manual",
            retry_backoff=0.0,
        )
    )
    tel.grant_consent(Tier.HEALTH)
    tel.grant_consent(Tier.PERFORMANCE)
    tel.collect(clock.advance(hours=24))  # spooled, not yet sent (manual mode)
    tel.revoke_consent(Tier.PERFORMANCE)
    assert tel.flush()
    tiers = {r.tier for e in down.envelopes for r in e.reports}
    assert tiers == {Tier.HEALTH}


def test_aggregate_signals_without_a_helper_fail_at_setup(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    no_helper = POLICY.model_copy(
        update={"aggregation": POLICY.aggregation.model_copy(update={"helper": None})}
    )
    with pytest.raises(ConfigError, match=r"no aggregation\.helper"):
        _telemetry(tmp_path, ingest, clock, policy=no_helper)


def test_clamping_a_heavy_window_keeps_every_cells_mean() -> None:
    # Cloud latencies 3x the usual: the window's sum (60 s) is far over the 8 s cap.
    raw = [
        HistogramSnapshot([0, 2, 0, 0], 1.6),  # local: 2 events, mean 0.8
        HistogramSnapshot([0, 0, 0, 6], 21.6),  # cloud: 6 events, mean 3.6
        HistogramSnapshot([0, 0, 0, 0], 0.0),
    ]
    clamped = clamp_histogram(LATENCY, raw)
    kept = [sum(c) for c in clamped.counts]
    assert sum(clamped.sums) <= LATENCY.sum_cap + 1e-9
    assert sum(kept) <= LATENCY.max_events_per_window
    for (n, s), mean in zip(zip(kept, clamped.sums, strict=False), (0.8, 3.6), strict=False):
        if n:
            assert s / n == pytest.approx(mean)


def test_clamping_by_events_keeps_proportions_and_means() -> None:
    raw = [HistogramSnapshot([10, 0, 0, 0], 3.0), HistogramSnapshot([0, 4, 0, 0], 2.4)]
    signal = LATENCY.model_copy(update={"max_sum_per_window": 100.0})
    clamped = clamp_histogram(signal, raw)  # 14 events over a cap of 7
    assert [sum(c) for c in clamped.counts] == [5, 2]
    assert clamped.sums[0] / 5 == pytest.approx(0.3)
    assert clamped.sums[1] / 2 == pytest.approx(0.6)


def test_random_rounding_of_sums_is_unbiased_and_within_the_bound() -> None:
    rounded = [quantize_sums([2.3, 0.45], 1.0, 3) for _ in range(4000)]
    assert all(sum(r) <= 3 for r in rounded)
    # 2.3 -> 2 or 3; but 3 + 1 would cross the bound and is cut back, so check the
    # unconstrained cell on its own: 0.45 -> 0 or 1 with mean 0.45.
    assert statistics.fmean(r[1] for r in rounded) == pytest.approx(0.45, abs=0.04)
    free = [quantize_sums([2.3], 1.0, 1000)[0] for _ in range(4000)]
    assert statistics.fmean(free) == pytest.approx(2.3, abs=0.04)


def test_a_backlog_of_large_envelopes_goes_out_in_bounded_requests(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import client._outbox

    tel = _telemetry(tmp_path, ingest, clock)
    for _ in range(3):
        tel.collect(clock.advance(hours=24))
    one = max(len(i) for i in _sealed_sizes(tel))
    monkeypatch.setattr(client._outbox, "MAX_BATCH_BYTES", one + 1)  # two per request
    assert tel.flush()
    assert [len(b.envelopes) for b in ingest.batches] == [2, 1]
    assert [e.window_start for e in ingest.envelopes] == sorted(
        e.window_start for e in ingest.envelopes
    )


def _sealed_sizes(tel: Telemetry) -> list[str]:
    return [tel._sealer.seal(e) for e in list(tel._outbox._items)]


TOTALS_POLICY: Policy = POLICY.model_copy(
    update={
        "signals": {
            "requests": CounterSignal(
                tier=Tier.PERFORMANCE,
                attributes={"route": ROUTES},
                max_per_window=15,
                epsilon=1.0,
                parts={"cells": 0.7, "total": 0.3},
            ),
            "latency": LATENCY.model_copy(
                update={
                    "max_events_per_window": 15,
                    "max_sum_per_window": 30.0,
                    "cell_max_events": 7,
                    "cell_max_sum": 8.0,
                    "parts": {
                        "buckets": 0.2,
                        "counts": 0.2,
                        "sums": 0.2,
                        "total_events": 0.2,
                        "total_sum": 0.2,
                    },
                }
            ),
        }
    }
)


def test_totals_are_clamped_to_their_own_bounds_not_scaled_down(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    tasks = aggregation_tasks(TOTALS_POLICY)
    tel = _telemetry(tmp_path, ingest, clock, policy=TOTALS_POLICY)
    tel.counter("requests").add(20, route="local")  # over 15: the total keeps 15
    for _ in range(10):  # 10 events, 20 s: over the cells' caps (7, 8 s), under the totals'
        tel.histogram("latency").record(2.0, route="cloud")
    (window,) = tel.collect_with_truth(clock.advance(hours=24))
    assert tel.flush()
    (envelope,) = ingest.envelopes
    h = TOTALS_POLICY.content_hash

    def revealed(task: str) -> list[int]:
        return _aggregate(tasks[task], _reports(envelope, task), h)

    assert revealed("requests/total") == [15]
    assert revealed("latency/total_events") == [10]
    total_sum = tasks["latency/total_sum"]
    assert revealed("latency/total_sum")[0] * total_sum.resolution == pytest.approx(
        20.0, abs=total_sum.resolution
    )
    # The cells were scaled down as a whole: 4 events (8 s cap / 2 s), mean kept.
    assert revealed("latency/counts") == [0, 4, 0]
    totals = {(t.signal, t.measure): t.value for t in window.truth if hasattr(t, "measure")}
    assert totals == {
        ("requests", "count"): 15.0,
        ("latency", "count"): 10.0,
        ("latency", "sum"): 20.0,
    }
