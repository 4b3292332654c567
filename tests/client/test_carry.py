"""Whole windows across restarts: the open window is carried at shutdown, never released
in part, and the next run releases it once, whole (client._carry)."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import client._telemetry as telemetry_module
from client import MemoryTransport, Telemetry, TelemetryConfig, TrueCounter
from client._carry import CarriedWindow, encode_carried
from client._consent import ConsentStore
from client._release import Truth
from client._window import window_start_of
from policies import PILOT_POLICY_PATH, Policy, load_policy
from schemas import AppInfo, EnvelopeV1, Tier
from tests.client.conftest import POLICY, T0, FakeClock, MemoryIngest

PILOT = load_policy(PILOT_POLICY_PATH)  # local model, one-day windows
DAY = T0.replace(hour=0)
ONE_DAY = timedelta(days=1)
ERRORS = "inference.errors"  # health tier
REQUESTS = "inference.requests"  # performance tier
MODEL = "qwen2.5-7b@1.1"
# Health only: its signals (3.8 a window) leave room for two releases in the last 24
# real hours under the pilot's daily cap of 16, so a late release suppresses nothing.
HEALTH = (Tier.HEALTH,)
# Health and performance: 15.2 a window under the pilot's daily cap of 16, so two
# releases within 24 real hours of each other cannot both be granted.
EVERY_SENDABLE = (Tier.HEALTH, Tier.PERFORMANCE)
CARRIED = Path("spool") / "open_window.sealed"
"""The carry record, under the state directory."""


def _telemetry(
    state: Path,
    ingest: MemoryIngest,
    clock: FakeClock,
    policy: Policy = PILOT,
    consent: tuple[Tier, ...] = HEALTH,
    mode: str = "manual",
) -> Telemetry:
    tel = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=policy,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=state,
            clock=clock,
            mode=mode,  # type: ignore[arg-type]
            retry_backoff=0.0,
        )
    )
    for tier in consent:
        tel.grant_consent(tier)
    return tel


def _errors(truth: list[Truth]) -> int:
    return sum(t.value for t in truth if isinstance(t, TrueCounter) and t.signal == ERRORS)


def _record_errors(tel: Telemetry, n: int) -> None:
    tel.counter(ERRORS).add(n, route="local", model=MODEL)


def _carry_a_window(
    state: Path,
    ingest: MemoryIngest,
    clock: FakeClock,
    errors: int,
    consent: tuple[Tier, ...] = HEALTH,
) -> Telemetry:
    """A run that records `errors` errors and shuts down mid-window, carrying it."""
    tel = _telemetry(state, ingest, clock, consent=consent)
    _record_errors(tel, errors)
    tel.shutdown()
    return tel


def _crash(tel: Telemetry) -> None:
    """The process dies: nothing more is written, its locks go with it."""
    tel._closed = True
    tel._gate.close()


def test_a_restart_within_the_window_releases_both_runs_in_one_envelope(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    first = _carry_a_window(tmp_path, ingest, clock, 2)  # 09:00: mid-window
    assert ingest.envelopes == []
    assert first.privacy_spent(DAY)[0] == 0.0  # carried, uncharged

    clock.advance(hours=2)
    second = _telemetry(tmp_path, ingest, clock)
    _record_errors(second, 3)
    assert second.collect(clock.now) == []  # the window is still open
    (window,) = second.collect_with_truth(DAY + ONE_DAY)
    assert second.flush()
    (envelope,) = ingest.envelopes  # one envelope for the day, whole
    assert (envelope.window_start, envelope.window_end) == (DAY, DAY + ONE_DAY)
    assert _errors(window.truth) == 5  # both runs' counts, in one release


def test_a_restart_after_the_window_ended_releases_it_late_on_its_own(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    _carry_a_window(tmp_path, ingest, clock, 2)

    clock.now = DAY + 2 * ONE_DAY + timedelta(hours=10)  # two days later
    second = _telemetry(tmp_path, ingest, clock)
    _record_errors(second, 3)  # today's: never mixed into the late window
    (late,) = second.collect_with_truth(clock.now)
    assert (late.envelope.window_start, late.envelope.window_end) == (DAY, DAY + ONE_DAY)
    assert late.envelope.sent_at == clock.now
    assert _errors(late.truth) == 2
    charge = sum(s.epsilon for s in PILOT.signals.values() if s.tier is Tier.HEALTH)
    assert second.privacy_spent(DAY)[0] == charge  # charged to the window's day

    (today,) = second.collect_with_truth(DAY + 3 * ONE_DAY)
    assert today.envelope.window_start == DAY + 2 * ONE_DAY
    assert _errors(today.truth) == 3
    assert second.flush()
    # The day between, when the app did not run, is not released.
    assert [e.window_start for e in ingest.envelopes] == [DAY, DAY + 2 * ONE_DAY]
    assert second.privacy_spent(DAY + ONE_DAY)[0] == 0.0


def test_shutdown_before_any_collect_releases_the_late_window(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    _carry_a_window(tmp_path, ingest, clock, 2)
    clock.advance(days=1)
    second = _telemetry(tmp_path, ingest, clock)
    second.shutdown()
    (envelope,) = ingest.envelopes
    assert (envelope.window_start, envelope.window_end) == (DAY, DAY + ONE_DAY)


def test_a_window_overlapping_one_already_released_is_discarded_and_counted(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    tel = _telemetry(tmp_path, ingest, clock)
    # As an older version left it: it released [00:00, 09:00) at shutdown.
    tel._state.next_sequence(DAY + timedelta(hours=9))
    clock.advance(hours=2)
    _record_errors(tel, 3)
    assert tel.collect(DAY + ONE_DAY) == []
    assert tel.dropped() == {"window_already_released": 1}
    assert tel.privacy_spent(DAY)[0] == 0.0  # nothing charged for it
    assert tel.flush()
    assert ingest.envelopes == []

    _record_errors(tel, 1)
    (window,) = tel.collect_with_truth(DAY + 2 * ONE_DAY)  # the next window is normal
    assert window.envelope.window_start == DAY + ONE_DAY
    assert _errors(window.truth) == 1


def test_a_carried_window_overlapping_one_already_released_is_discarded(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    first = _telemetry(tmp_path, ingest, clock)
    first._state.next_sequence(DAY + timedelta(hours=8))  # an older version's release
    _record_errors(first, 2)
    first.shutdown()
    clock.advance(days=1)
    second = _telemetry(tmp_path, ingest, clock)
    assert second.collect(clock.now) == []
    assert second.dropped() == {"window_already_released": 1}
    assert second.privacy_spent(DAY)[0] == 0.0


def test_shutdown_without_carry_discards_the_open_window_and_counts_it(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    first = _telemetry(tmp_path, ingest, clock)
    _record_errors(first, 2)
    first.counter(ERRORS).add(1, route="cloud", model=MODEL)
    first.counter(REQUESTS).add(5, route="local", model=MODEL)  # not consented
    first.shutdown(carry_open_window=False)
    assert first.dropped() == {"open_window_discarded": 3}
    assert not (tmp_path / CARRIED).exists()

    clock.advance(hours=2)
    second = _telemetry(tmp_path, ingest, clock)
    (window,) = second.collect_with_truth(DAY + ONE_DAY)
    assert (window.envelope.window_start, window.envelope.window_end) == (DAY, DAY + ONE_DAY)
    assert _errors(window.truth) == 0


def test_an_empty_open_window_is_still_carried_and_released_late(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    # Whether a window is released must not depend on what was recorded in it.
    _telemetry(tmp_path, ingest, clock).shutdown()
    clock.advance(days=1)
    (late,) = _telemetry(tmp_path, ingest, clock).collect_with_truth(clock.now)
    assert late.envelope.window_start == DAY
    assert _errors(late.truth) == 0


def test_a_consent_granted_again_releases_nothing_of_the_carried_window_for_the_tier(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Health's consent did not last from the cut to the release: its cells are
    discarded and the window is not released for it (health was all it held), nor
    charged; the run's own windows are released as usual."""
    _carry_a_window(tmp_path, ingest, clock, 2)
    clock.advance(days=1)
    second = _telemetry(tmp_path, ingest, clock)
    second.revoke_consent(Tier.HEALTH)
    second.grant_consent(Tier.HEALTH)
    assert second.collect_with_truth(clock.now) == []
    assert second.privacy_spent(DAY)[0] == 0.0
    _record_errors(second, 1)
    (today,) = second.collect_with_truth(DAY + 2 * ONE_DAY)
    assert today.envelope.window_start == DAY + ONE_DAY
    assert _errors(today.truth) == 1


@pytest.mark.parametrize("later", [timedelta(hours=2), ONE_DAY], ids=["same_window", "late"])
def test_a_revocation_purges_the_carried_window_on_disk_before_a_crash(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock, later: timedelta
) -> None:
    """Revoked, then granted again, both on disk; then the process is killed. The next
    start must not find the cells recorded before the revocation in the carry record
    (nor release the carried window late for the tier)."""
    _carry_a_window(tmp_path, ingest, clock, 7)
    clock.now += later
    second = _telemetry(tmp_path, ingest, clock)
    second.revoke_consent(Tier.HEALTH)
    assert not (tmp_path / CARRIED).exists()  # health was all it held
    second.grant_consent(Tier.HEALTH)
    _crash(second)

    third = _telemetry(tmp_path, ingest, clock, consent=())
    assert third.consented_tiers() == [Tier.HEALTH]  # as the second run left it
    if later < ONE_DAY:
        (window,) = third.collect_with_truth(DAY + ONE_DAY)
        assert _errors(window.truth) == 0
    else:
        assert third.collect_with_truth(clock.now) == []
        assert third.privacy_spent(DAY)[0] == 0.0


def test_a_grant_purges_the_carried_window_of_the_tier_before_it_is_written(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """A revocation that left the carried cells on disk (an older client's, or one a
    crash cut short): the grant that follows discards them there too."""
    _carry_a_window(tmp_path, ingest, clock, 2)
    ConsentStore(tmp_path / "consent.json", lambda _b: b"x", PILOT).revoke(Tier.HEALTH)
    clock.advance(hours=2)  # the same window: the record's cells join the open window
    second = _telemetry(tmp_path, ingest, clock)  # health granted again
    _crash(second)

    third = _telemetry(tmp_path, ingest, clock, consent=())
    (window,) = third.collect_with_truth(DAY + ONE_DAY)
    assert _errors(window.truth) == 0


def test_a_revocation_rewrites_the_carried_window_without_the_tier(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    first = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    _record_errors(first, 2)
    first.counter(REQUESTS).add(4, route="local", model=MODEL)
    first.shutdown()
    clock.advance(days=1)
    second = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    second.revoke_consent(Tier.HEALTH)
    assert (tmp_path / CARRIED).exists()  # performance is left
    _crash(second)

    # Health granted again: the record no longer holds it, cells or tier.
    third = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    (late,) = third.collect_with_truth(clock.now)
    assert late.envelope.window_start == DAY
    assert {a.tier for a in late.envelope.aggregates} == {Tier.PERFORMANCE}
    assert _errors(late.truth) == 0
    requests = sum(t.value for t in late.truth if t.signal == REQUESTS)
    assert requests == 4
    performance = sum(s.epsilon for s in PILOT.signals.values() if s.tier is Tier.PERFORMANCE)
    assert third.privacy_spent(DAY)[0] == pytest.approx(performance)


def test_in_background_mode_a_revocation_is_durable_with_the_carried_window_purged(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    _carry_a_window(tmp_path, ingest, clock, 2)
    clock.advance(hours=2)  # the same window: the record stays until it is released
    second = _telemetry(tmp_path, ingest, clock, mode="background")
    try:
        assert second.ready(timeout=30)
        assert second.wait_consent_durable(timeout=30)
        assert (tmp_path / CARRIED).exists()
        second.revoke_consent(Tier.HEALTH)
        assert second.wait_consent_durable(timeout=30)
        assert not (tmp_path / CARRIED).exists()
    finally:
        second.shutdown(carry_open_window=False, timeout=1.0)


def test_a_window_cut_with_no_tier_consented_is_neither_carried_nor_released_late(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Released after a later grant, it would say the app ran on a day the user had
    agreed to nothing."""
    _carry_a_window(tmp_path, ingest, clock, 3, consent=())
    assert not (tmp_path / CARRIED).exists()

    clock.now = DAY + 3 * ONE_DAY + timedelta(hours=9)
    second = _telemetry(tmp_path, ingest, clock)  # health granted today
    assert second.collect(clock.now) == []
    assert second.privacy_spent(DAY)[0] == 0.0


def test_a_late_window_releases_only_the_tiers_consented_at_its_cut(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    _carry_a_window(tmp_path, ingest, clock, 2)  # health only
    clock.advance(days=1)
    second = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)  # and performance
    (late,) = second.collect_with_truth(clock.now)
    assert late.envelope.window_start == DAY
    assert {a.tier for a in late.envelope.aggregates} == {Tier.HEALTH}
    assert late.envelope.suppressed == {}
    assert _errors(late.truth) == 2
    health = sum(s.epsilon for s in PILOT.signals.values() if s.tier is Tier.HEALTH)
    assert second.privacy_spent(DAY)[0] == pytest.approx(health)  # nothing for performance


def test_a_record_naming_no_tier_is_dropped_at_restore(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    first = _telemetry(tmp_path, ingest, clock)
    first.shutdown(carry_open_window=False)
    nothing = CarriedWindow(PILOT.content_hash, {}, {}, DAY, tiers=frozenset())
    first._outbox.put_carried(encode_carried(nothing))
    clock.advance(days=1)
    second = _telemetry(tmp_path, ingest, clock)
    assert not (tmp_path / CARRIED).exists()
    assert second.collect(clock.now) == []


def test_a_version_2_record_is_released_late_under_the_consent_at_the_release(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Written before records named their tiers: read as before."""
    first = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    cells = [0] * first._signals[ERRORS].domain.size
    cells[0] = 4
    first.shutdown(carry_open_window=False)
    record = {
        "version": 2,
        "policy_hash": PILOT.content_hash,
        "window_start": DAY.isoformat(),
        "carried_at": None,
        "counters": {ERRORS: cells},
        "histograms": {},
    }
    first._outbox.put_carried(json.dumps(record).encode())
    clock.advance(days=1)
    second = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    (late,) = second.collect_with_truth(clock.now)
    assert late.envelope.window_start == DAY
    assert {a.tier for a in late.envelope.aggregates} == {Tier.HEALTH, Tier.PERFORMANCE}
    assert _errors(late.truth) == 4


def test_a_version_1_record_is_added_into_the_open_window(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    first = _telemetry(tmp_path, ingest, clock)
    cells = [0] * first._signals[ERRORS].domain.size
    cells[0] = 4
    record = {"version": 1, "policy_hash": PILOT.content_hash, "counters": {ERRORS: cells}}
    first.shutdown(carry_open_window=False)
    # As an older client would have left it at its shutdown.
    first._outbox.put_carried(json.dumps({**record, "histograms": {}}).encode())
    clock.advance(days=1)  # a record without a window: it joins whatever window is open
    second = _telemetry(tmp_path, ingest, clock)
    assert second.collect(clock.now) == []
    (window,) = second.collect_with_truth(DAY + 2 * ONE_DAY)
    assert window.envelope.window_start == DAY + ONE_DAY
    assert _errors(window.truth) == 4


_STEP = st.one_of(
    st.tuples(st.just("record"), st.integers(1, 4)),
    st.tuples(st.just("advance"), st.integers(1, 150)),  # minutes
    st.tuples(st.just("collect"), st.just(0)),
    st.tuples(st.just("restart"), st.booleans()),  # carry the open window or not
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=1, max_size=25))
def test_every_envelope_covers_exactly_one_aligned_window_once(
    steps: list[tuple[str, int | bool]],
) -> None:
    seconds = POLICY.window_seconds  # hourly windows: many of them in a few steps
    ingest = MemoryIngest()
    clock = FakeClock(T0 + timedelta(minutes=17))
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        consent = (Tier.HEALTH, Tier.PERFORMANCE)
        tel = _telemetry(state, ingest, clock, POLICY, consent)
        for action, arg in steps:
            if action == "record":
                tel.counter("app.starts").add(int(arg))
            elif action == "advance":
                clock.advance(minutes=int(arg))
            elif action == "collect":
                tel.collect(clock.now)
            else:
                tel.shutdown(carry_open_window=bool(arg))
                tel = _telemetry(state, ingest, clock, POLICY, consent)
        tel.shutdown()
        clock.advance(minutes=60)  # the carried window ends: the next run releases it late
        tel = _telemetry(state, ingest, clock, POLICY, consent)
        tel.collect(clock.now)
        assert tel.flush()
        tel.shutdown(carry_open_window=False)
    envelopes: list[EnvelopeV1] = ingest.envelopes
    for envelope in envelopes:
        assert envelope.window_end - envelope.window_start == timedelta(seconds=seconds)
        assert window_start_of(envelope.window_start, seconds) == envelope.window_start
    starts = [e.window_start for e in envelopes]
    assert len(starts) == len(set(starts))  # at most one release per window


def test_a_late_release_is_charged_as_of_the_shutdown_so_the_next_day_is_not_suppressed(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Shut down in the evening, start next morning, run past midnight: both days
    released (charged as of the release instead, the late one would leave the next
    window, closing 14 real hours later, no room)."""
    clock.now = DAY + timedelta(hours=9)
    first = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    _record_errors(first, 2)
    clock.now = DAY + timedelta(hours=20)
    first.shutdown()

    clock.now = DAY + ONE_DAY + timedelta(hours=10)
    second = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    (late,) = second.collect(clock.now)
    (next_day,) = second.collect(DAY + 2 * ONE_DAY)
    for envelope in (late, next_day):
        assert envelope.suppressed == {}
        assert {a.signal for a in envelope.aggregates} >= {ERRORS, REQUESTS}
    assert (late.window_start, next_day.window_start) == (DAY, DAY + ONE_DAY)


def test_a_late_release_is_charged_at_the_first_instant_after_its_cut_with_room(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Cut at 08:00, eight hours after a release at midnight: charged as of the next
    midnight (when that release leaves the last 24 real hours; before the late
    release is made), so it is released, and so is the window after it."""
    clock.now = DAY + timedelta(hours=9)
    first = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    (day0,) = first.collect(DAY + ONE_DAY)  # released at midnight
    assert day0.suppressed == {}
    clock.now = DAY + ONE_DAY + timedelta(hours=8)
    first.shutdown()  # carries day 1, cut at 08:00

    clock.now = DAY + 2 * ONE_DAY + timedelta(hours=10)
    second = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    (late,) = second.collect(clock.now)
    (day2,) = second.collect(DAY + 3 * ONE_DAY)
    assert (late.window_start, day2.window_start) == (DAY + ONE_DAY, DAY + 2 * ONE_DAY)
    assert late.suppressed == {}
    assert day2.suppressed == {}


def test_a_shutdown_earlier_than_the_day_before_does_not_cost_the_late_window(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """An app used 09:00 to about 17:00, never at midnight: each day goes out late the
    next morning. The second cut is ten minutes earlier in the day than the first, so
    charged as of its cut it would share 24 real hours with the first."""
    clock.now = DAY + timedelta(hours=9)
    run = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    clock.now = DAY + timedelta(hours=17)
    run.shutdown()
    sent: list[EnvelopeV1] = []
    for day, close in ((1, timedelta(hours=16, minutes=50)), (2, timedelta(hours=17))):
        clock.now = DAY + day * ONE_DAY + timedelta(hours=9)
        run = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
        sent += run.collect(clock.now)
        clock.now = DAY + day * ONE_DAY + close
        run.shutdown()
    assert [e.window_start for e in sent] == [DAY, DAY + ONE_DAY]
    assert [e.suppressed for e in sent] == [{}, {}]


def test_a_late_window_without_room_before_its_release_is_suppressed(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """The cap still holds in real time: a charge at 10:00 leaves no room for the
    window cut at 11:00 until 10:00 the next day, after its release at 00:30."""
    clock.now = DAY + ONE_DAY + timedelta(hours=9)
    first = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    at_ten = first._clock.read(DAY + ONE_DAY + timedelta(hours=10))
    assert first._gate.ledger.try_charge_many([(REQUESTS, 15.0)], DAY, now=at_ten) == [True]
    clock.now = DAY + ONE_DAY + timedelta(hours=11)
    first.shutdown()

    clock.now = DAY + 2 * ONE_DAY + timedelta(minutes=30)
    second = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    (late,) = second.collect(clock.now)
    assert late.window_start == DAY + ONE_DAY
    assert late.aggregates == []
    assert set(late.suppressed) == {
        name for name, s in PILOT.signals.items() if s.tier in EVERY_SENDABLE
    }


def test_a_late_window_leaves_out_the_tiers_whose_retention_ended_uncharged(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Restarted 100 days later: performance data (90 days) would be stripped from the
    spool before it is sent, so it is neither released nor charged; health (395) is."""
    _carry_a_window(tmp_path, ingest, clock, 2, consent=EVERY_SENDABLE)

    clock.now = DAY + 100 * ONE_DAY
    second = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    (late,) = second.collect(clock.now)
    assert late.window_start == DAY
    assert {a.tier for a in late.aggregates} == {Tier.HEALTH}
    health = sum(s.epsilon for s in PILOT.signals.values() if s.tier is Tier.HEALTH)
    assert second.privacy_spent(DAY)[0] == pytest.approx(health)


def test_a_late_window_whose_every_tier_expired_is_not_sent(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    first = _telemetry(tmp_path, ingest, clock, consent=(Tier.PERFORMANCE,))
    first.counter(REQUESTS).add(4, route="local", model=MODEL)
    first.shutdown()

    clock.now = DAY + 100 * ONE_DAY
    second = _telemetry(tmp_path, ingest, clock, consent=(Tier.PERFORMANCE,))
    assert second.collect(clock.now) == []
    assert second.dropped()["expired"] == 1
    assert second.privacy_spent(DAY)[0] == 0.0


def test_a_cut_behind_the_latest_charge_is_charged_at_the_release(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """The wall clock set back after a release: the carried window's cut reads before
    the newest charge, which may already have pruned older ones against its stamp. A
    charge stamped at the cut would not see them; it is stamped at the release."""
    run = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    run.collect(DAY + ONE_DAY)
    run.collect(DAY + 2 * ONE_DAY)
    clock.now = DAY + ONE_DAY + timedelta(hours=5)  # set back behind the last charge
    run.shutdown()

    clock.now = DAY + 3 * ONE_DAY + timedelta(hours=1)
    again = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    (late,) = again.collect(clock.now)
    assert late.window_start == DAY + 2 * ONE_DAY
    assert again._gate.ledger.latest_wall == clock.now.timestamp()


def test_a_crash_before_the_late_release_loses_nothing(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    _carry_a_window(tmp_path, ingest, clock, 2)
    clock.now = DAY + ONE_DAY + timedelta(hours=9)
    _crash(_telemetry(tmp_path, ingest, clock))  # started, died before any collect

    third = _telemetry(tmp_path, ingest, clock)
    (late,) = third.collect_with_truth(clock.now)
    assert late.envelope.window_start == DAY
    assert _errors(late.truth) == 2
    assert not (tmp_path / CARRIED).exists()  # released: the record is gone
    third.shutdown()
    # Restarted again after a crash that followed the release: nothing is sent twice.
    clock.now += timedelta(days=2)
    fourth = _telemetry(tmp_path, ingest, clock)
    assert [e.window_start for e in fourth.collect(clock.now)] == [DAY + ONE_DAY]


def test_a_consent_call_on_a_telemetry_after_shutdown_keeps_a_newer_revocation(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Review s18b H1 (a): a settings callback still holds a `Telemetry` that was shut
    down; its write adds only its own decision to the file as it is now."""
    old = _telemetry(tmp_path, ingest, clock, mode="background")
    try:
        assert old.ready(timeout=30)
        assert old.wait_consent_durable(timeout=30)
    finally:
        old.shutdown(timeout=1.0)
    new = _telemetry(tmp_path, ingest, clock, consent=(), mode="background")
    try:
        assert new.ready(timeout=30)
        new.revoke_consent(Tier.HEALTH)
        assert new.wait_consent_durable(timeout=30)
        old.grant_consent(Tier.PERFORMANCE)
        assert old.consented_tiers() == [Tier.PERFORMANCE]  # it adopted the revocation
    finally:
        new.shutdown(carry_open_window=False, timeout=1.0)
    nxt = _telemetry(tmp_path, ingest, clock, consent=())
    assert nxt.consented_tiers() == [Tier.PERFORMANCE]


def test_a_revocation_written_by_a_telemetry_that_never_loaded_holds(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    """Review s18b H1 (b): B never loads (A holds the ledger lock) and writes its
    revocation at shutdown; A's later consent write does not erase it, and A's second
    revocation of the tier asks for no second deletion."""
    a = _telemetry(tmp_path, ingest, clock, consent=EVERY_SENDABLE)
    b = _telemetry(tmp_path, ingest, clock, consent=(), mode="background")
    assert not b.ready(timeout=0.5)
    b.revoke_consent(Tier.HEALTH)
    b.shutdown(timeout=1.0)
    assert b.wait_consent_durable(timeout=0)
    a.revoke_consent(Tier.PERFORMANCE)
    a.revoke_consent(Tier.HEALTH)  # the file holds it already
    a.shutdown(carry_open_window=False, timeout=1.0)
    records = ConsentStore(tmp_path / "consent.json", lambda _b: b"x", PILOT).records()
    assert [(s.record.tier, s.record.granted) for s in records[2:]] == [
        (Tier.HEALTH, False),
        (Tier.PERFORMANCE, False),
    ]
    assert len(list((tmp_path / "spool").glob("*.req"))) == 2
    nxt = _telemetry(tmp_path, ingest, clock, consent=())
    assert nxt.consented_tiers() == []
    assert nxt.collect(DAY + ONE_DAY) == []


def test_in_background_mode_a_decision_made_during_a_carry_purge_is_written_after_its_own(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s18b H3: health is revoked and granted again while the worker purges the
    carry record for a revocation of performance. When the health decisions reach
    `consent.json`, the carry record must no longer hold health's earlier cells."""
    state, image = tmp_path / "state", tmp_path / "crash-image"
    first = _telemetry(state, ingest, clock, consent=EVERY_SENDABLE)
    _record_errors(first, 7)
    first.shutdown()
    clock.advance(hours=2)  # the same window

    in_purge, decided = threading.Event(), threading.Event()
    real_purge, real_persist = telemetry_module._purge_carried, ConsentStore.persist

    def purge(spool: Any, tiers: set[Tier], tier_of: Any) -> None:
        if Tier.PERFORMANCE in tiers and not in_purge.is_set():
            in_purge.set()
            decided.wait(10)  # the user acts while the record is rewritten
        real_purge(spool, tiers, tier_of)

    def persist(self: ConsentStore, *args: Any) -> Any:
        written = real_persist(self, *args)
        on_disk = ConsentStore(self._path, lambda _b: b"x", PILOT).records()
        if sum(s.record.tier is Tier.HEALTH for s in on_disk) == 3 and not image.exists():
            shutil.copytree(state, image)  # the process is killed once they are written
        return written

    monkeypatch.setattr(telemetry_module, "_purge_carried", purge)
    monkeypatch.setattr(ConsentStore, "persist", persist)
    second = _telemetry(state, ingest, clock, consent=(), mode="background")
    try:
        assert second.ready(timeout=30)
        second.revoke_consent(Tier.PERFORMANCE)
        assert in_purge.wait(10)
        second.revoke_consent(Tier.HEALTH)
        second.grant_consent(Tier.HEALTH)
        decided.set()
        assert second.wait_consent_durable(timeout=30)
    finally:
        second.shutdown(carry_open_window=False, timeout=1.0)
    monkeypatch.undo()

    (image / "privacy_ledger.journal.lock").unlink(missing_ok=True)
    third = _telemetry(image, ingest, clock, consent=())
    assert third.consented_tiers() == [Tier.HEALTH]
    windows = third.collect_with_truth(DAY + ONE_DAY)
    assert sum(_errors(w.truth) for w in windows) == 0


class _Killed(Exception):
    """The process dies here."""


@pytest.mark.parametrize("mode", ["manual", "background"])
def test_a_kill_right_after_a_revocation_is_written_keeps_its_deletion_request(
    tmp_path: Path,
    ingest: MemoryIngest,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """Review s18b H5: the deletion request is stored before the revocation is written,
    so a kill right after the write (or anywhere after the request) loses neither."""
    tel = _telemetry(tmp_path, ingest, clock, consent=(), mode=mode)
    try:
        assert tel.ready(timeout=30)
        tel.grant_consent(Tier.HEALTH)
        assert tel.wait_consent_durable(timeout=30)
        real_write = ConsentStore._write
        killed = threading.Event()

        def write(self: ConsentStore, history: list[Any]) -> None:
            real_write(self, history)
            if not history[-1].record.granted:
                killed.set()
                raise _Killed

        monkeypatch.setattr(ConsentStore, "_write", write)
        with contextlib.suppress(_Killed):
            tel.revoke_consent(Tier.HEALTH)
        assert killed.wait(10)
    finally:
        monkeypatch.undo()
        _crash(tel)
    nxt = _telemetry(tmp_path, ingest, clock, consent=())
    assert nxt.consented_tiers() == []
    ((_, request),) = nxt._outbox.deletions()
    assert request.tier is Tier.HEALTH


def _slow_state_load(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """A slow disk: reading the device state takes `seconds`."""
    real_init = telemetry_module.DeviceState.__init__

    def slow_init(self: Any, *args: Any, **kw: Any) -> None:
        time.sleep(seconds)
        real_init(self, *args, **kw)

    monkeypatch.setattr(telemetry_module.DeviceState, "__init__", slow_init)


def _wait_until_stopped(tel: Telemetry) -> None:
    worker = tel._worker
    assert worker is not None
    deadline = time.monotonic() + 30.0
    while worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.is_alive()


def test_consent_queued_during_a_load_that_fails_after_shutdown_is_written(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s18b H4: `shutdown` returns while the worker is still loading; the load
    then fails (another `Telemetry` holds the ledger's lock). The queued revocation is
    written without the state all the same."""
    holder = _telemetry(tmp_path, ingest, clock)  # holds the ledger's lock
    _slow_state_load(monkeypatch, 1.5)
    tel = _telemetry(tmp_path, ingest, clock, consent=(), mode="background")
    tel.revoke_consent(Tier.HEALTH)  # queued: the state is not loaded
    tel.shutdown(timeout=0.3)
    _wait_until_stopped(tel)
    monkeypatch.undo()
    assert tel.wait_consent_durable(timeout=0)
    holder.shutdown(carry_open_window=False, timeout=1.0)
    nxt = _telemetry(tmp_path, ingest, clock, consent=())
    assert nxt.consented_tiers() == []


def test_a_load_that_ends_after_shutdown_writes_the_consent_and_frees_the_ledger(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review s18b H4 (related): the late load succeeds; the worker writes the queued
    revocation and gives the ledger's lock back, sending nothing."""
    first = _telemetry(tmp_path, ingest, clock)
    first.shutdown(carry_open_window=False, timeout=1.0)
    _slow_state_load(monkeypatch, 1.0)
    tel = _telemetry(tmp_path, ingest, clock, consent=(), mode="background")
    tel.revoke_consent(Tier.HEALTH)
    tel.shutdown(timeout=0.2)
    _wait_until_stopped(tel)
    monkeypatch.undo()
    assert tel.wait_consent_durable(timeout=0)
    nxt = _telemetry(tmp_path, ingest, clock, consent=())  # manual: raises if locked
    assert nxt.consented_tiers() == []
