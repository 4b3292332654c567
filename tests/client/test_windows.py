"""Windowing with a fake clock (manual mode), persistence across restarts, background mode."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta

from client import TrueCounter
from client._envelope import sequence_floor
from client._window import WindowClock, window_start_of
from tests.client.conftest import T0, MakeTelemetry


def _starts(truth: list[object]) -> int:
    return next(t.value for t in truth if isinstance(t, TrueCounter) and t.signal == "app.starts")


def test_windows_are_aligned_to_epoch_multiples() -> None:
    t = datetime(2026, 3, 2, 9, 41, 7, tzinfo=UTC)
    assert window_start_of(t, 3600) == datetime(2026, 3, 2, 9, tzinfo=UTC)
    assert window_start_of(t, 900) == datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    clock = WindowClock(3600, t)
    assert clock.open_window.end == datetime(2026, 3, 2, 10, tzinfo=UTC)


def test_nothing_is_released_before_the_window_ends(make_telemetry: MakeTelemetry, clock) -> None:
    qw = make_telemetry()
    starts = qw.counter("app.starts")
    starts.add(1)
    assert qw.collect(clock.advance(minutes=59, seconds=59)) == []
    starts.add(1)
    (window,) = qw.collect_with_truth(clock.advance(seconds=1))
    assert (window.envelope.window_start, window.envelope.window_end) == (
        T0,
        T0 + timedelta(hours=1),
    )
    assert _starts(window.truth) == 2
    starts.add(1)  # lands in the next window
    (nxt,) = qw.collect_with_truth(clock.advance(hours=1))
    assert _starts(nxt.truth) == 1
    assert nxt.envelope.sequence > window.envelope.sequence


def test_idle_windows_still_release_zeros(make_telemetry: MakeTelemetry, clock) -> None:
    qw = make_telemetry()
    qw.counter("app.starts").add(2)
    windows = qw.collect_with_truth(clock.advance(hours=3, minutes=5))
    assert [w.envelope.window_start for w in windows] == [
        T0,
        T0 + timedelta(hours=1),
        T0 + timedelta(hours=2),
    ]
    assert [_starts(w.truth) for w in windows] == [2, 0, 0]
    # Numbered at one instant: from the clock's microseconds, one apart.
    first = sequence_floor(clock.now.timestamp())
    assert [w.envelope.sequence for w in windows] == [first, first + 1, first + 2]
    assert all(len(w.envelope.aggregates) == 12 + 1 + 3 for w in windows)


def test_sequence_and_release_horizon_survive_restarts(make_telemetry, clock, tmp_path) -> None:
    state = tmp_path / "device"
    first = make_telemetry(state_dir=state)
    numbered = [e.sequence for e in first.collect(clock.advance(hours=2))]
    assert len(numbered) == 2
    clock.advance(minutes=20)
    first.counter("app.starts").add(1)
    first.shutdown()  # 11:00-12:00 is open: carried, not released
    assert first.pending == 0

    second = make_telemetry(state_dir=state)
    assert second.device_id == first.device_id  # same key from the state dir
    (window,) = second.collect_with_truth(clock.advance(hours=1))
    assert window.envelope.sequence > numbered[-1]
    # The whole aligned window, with what the first run recorded in it.
    assert window.envelope.window_start == T0 + timedelta(hours=2)
    assert window.envelope.window_end == T0 + timedelta(hours=3)
    assert _starts(window.truth) == 1


def test_background_mode_carries_the_open_window_at_shutdown(
    make_telemetry, clock, ingest, tmp_path
) -> None:
    state = tmp_path / "device"
    qw = make_telemetry(mode="background", state_dir=state)
    qw.counter("app.starts").add(1)
    clock.advance(minutes=10)
    qw.shutdown()
    assert ingest.envelopes == []  # no partial window
    assert qw.pending == 0

    clock.advance(hours=2)  # the window ended while the app was not running
    again = make_telemetry(mode="background", state_dir=state)
    assert again.flush(timeout=30)  # the worker's first round released it, late
    (envelope,) = ingest.envelopes
    assert (envelope.window_start, envelope.window_end) == (T0, T0 + timedelta(hours=1))
    assert envelope.sent_at == clock.now


def test_background_mode_closes_due_windows_on_flush(make_telemetry, clock, ingest) -> None:
    qw = make_telemetry(mode="background")
    clock.advance(hours=1)
    assert qw.flush(timeout=30)
    assert [e.window_end for e in ingest.envelopes] == [T0 + timedelta(hours=1)]


def test_a_forked_child_keeps_recording_and_sending(make_telemetry, clock, ingest) -> None:
    qw = make_telemetry(mode="background")
    pid = os.fork()
    if pid == 0:  # the child: its own worker thread must close windows and send
        code = 1
        try:
            qw.counter("app.starts").add(1)
            clock.advance(hours=1)
            code = 0 if qw.flush(timeout=30) and len(ingest.envelopes) == 1 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_fork_while_another_thread_holds_the_state_locks_does_not_hang_the_child(
    make_telemetry: MakeTelemetry, clock
) -> None:
    # The parent's worker holds these during window close (the ledger and the state
    # file fsync under them); a child forked at that moment must get fresh ones.
    qw = make_telemetry()
    held = [qw._gate.ledger._mutex, qw._gate.consent._mutex, qw._state._lock]
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(60)  # a deadlock ends the child with SIGALRM, not the suite
                qw.counter("app.starts").add(1)
                qw.privacy_spent()
                (envelope,) = qw.collect(clock.advance(hours=1))
                # The child may not charge the parent's ledger: suppressed, but sent.
                code = 0 if envelope.suppressed and qw.flush() else 1
            finally:
                os._exit(code)
    finally:
        for lock in held:
            lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_shutdown_never_raises_and_always_releases_the_ledger(
    make_telemetry: MakeTelemetry, clock, tmp_path
) -> None:
    from client._ledger import PrivacyLedger

    state = tmp_path / "device"
    qw = make_telemetry(state_dir=state)
    qw.counter("app.starts").add(1)
    (state / "client_state.json").write_text("{not json")  # the open window cannot be built
    qw.shutdown()
    # The ledger's lock was given back: another client can open the state directory.
    PrivacyLedger(state / "privacy_ledger.journal", qw._policy.privacy).close()
