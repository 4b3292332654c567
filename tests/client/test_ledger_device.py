"""The ledger on a running device: the device's own files cannot roll it back, and the
daily cap holds in real time whatever the wall clock says (issue 9, items 1 and 3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from client import HttpTransport, LedgerError, MemoryTransport, Telemetry, TelemetryConfig
from client._loss import release_loss
from client._privacy import MAX_HOLD_SECONDS
from policies import Policy, dump_policy
from schemas import AppInfo, BatchResult, EnvelopeBatch, EnvelopeV1, Tier
from tests.client.conftest import POLICY, FakeClock, MakeTelemetry, MemoryIngest

CAP = POLICY.privacy.daily_epsilon  # 8, and every hourly window costs 2 (all tiers)
SIGNALS = set(POLICY.signals)


class FakeMonotonic:
    """A settable monotonic clock: real elapsed time, which no user can move."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _loss(envelopes: list[EnvelopeV1], policy: Policy = POLICY) -> float:
    """Worst-case epsilon of what the envelopes released (OpenDP's composed maps)."""
    released = [{a.signal for a in e.aggregates} for e in envelopes]
    return math.fsum(
        release_loss(policy.signals[s], policy.privacy.mechanisms) for r in released for s in r
    )


def _spend_the_day(qw: Telemetry, clock: FakeClock, mono: FakeMonotonic | None = None) -> None:
    for _ in range(4):  # four hourly windows of 2 epsilon: the cap of 8
        qw.counter("app.starts").add(1)
        if mono is not None:
            mono.advance(3600)
        qw.collect(clock.advance(hours=1))
    assert qw.privacy_spent()[0] == CAP


def _damage(journal: Path, how: str) -> None:
    lines = journal.read_bytes().splitlines(keepends=True)
    if how == "deleted":
        journal.unlink()
    elif how == "truncated":
        journal.write_bytes(b"")
    elif how == "emptied":
        journal.write_bytes(lines[0])  # the header kept, every charge line deleted
    else:
        flipped = bytearray(lines[2])
        flipped[len(flipped) // 2] ^= 0x04  # one flipped byte in a charge line
        journal.write_bytes(b"".join([*lines[:2], bytes(flipped), *lines[3:]]))


@pytest.mark.parametrize("how", ["deleted", "truncated", "emptied", "corrupt"])
def test_a_damaged_journal_stops_every_release_until_the_operator_resets_it(
    make_telemetry: MakeTelemetry, ingest: MemoryIngest, clock: FakeClock, tmp_path: Path, how: str
) -> None:
    state = tmp_path / "device"
    qw = make_telemetry(state_dir=state)
    _spend_the_day(qw, clock)
    assert qw.flush()
    qw.shutdown(carry_open_window=False)
    _damage(state / "privacy_ledger.journal", how)

    again = make_telemetry(state_dir=state)
    problem = again.ledger_problem()
    assert isinstance(problem, LedgerError)
    assert "operator" in str(problem)
    for _ in range(3):  # the same day: nothing is released, every signal suppressed
        again.counter("app.starts").add(1)
        (envelope,) = again.collect(clock.advance(hours=1))
        assert not envelope.aggregates
        assert envelope.suppressed == dict.fromkeys(SIGNALS, 1)
    assert again.dropped()["ledger_failed"] == 3 * len(SIGNALS)
    assert again.flush()
    day = clock.now.date()
    assert _loss([e for e in ingest.envelopes if e.window_start.date() == day]) == CAP

    # The operator acknowledges the loss: the day (and 24 real hours) count as spent.
    again.reset_ledger(f"journal {how}; acknowledged by the operator")
    assert again.ledger_problem() is None
    (envelope,) = again.collect(clock.advance(hours=1))
    assert not envelope.aggregates
    assert envelope.suppressed
    assert any(".damaged-" in p.name for p in state.iterdir()) or how == "deleted"
    # A day later releases resume.
    released = again.collect(clock.advance(hours=25))
    assert any(e.aggregates for e in released)


def test_a_clock_moved_forward_opens_no_budget(
    make_telemetry: MakeTelemetry, ingest: MemoryIngest, clock: FakeClock
) -> None:
    mono = FakeMonotonic()
    qw = make_telemetry(monotonic=mono)
    _spend_the_day(qw, clock, mono)
    # Three days forward on the wall clock, one real hour later.
    qw.counter("app.starts").add(5)
    mono.advance(3600)
    released = qw.collect(clock.advance(days=3))
    assert len(released) > 70  # every hourly window of three days closed...
    assert not any(e.aggregates for e in released)  # ...and the cap suppressed them all
    assert all(e.suppressed == dict.fromkeys(SIGNALS, 1) for e in released)
    # Back again (and further back): no window reopens, nothing is released.
    mono.advance(3600)
    assert qw.collect(clock.advance(days=-4)) == []
    assert qw.flush()
    assert _loss(ingest.envelopes) == CAP  # all of it within those five real hours
    # 24 real hours after the first release, the budget opens again (whatever the wall).
    mono.advance(19 * 3600)
    qw.counter("app.starts").add(1)
    clock.advance(days=4, hours=2)
    assert any(e.aggregates for e in qw.collect(clock.now))


def test_a_release_due_slightly_early_waits_for_the_budget_instead_of_being_suppressed(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock
) -> None:
    # One-day windows whose every release costs the whole daily cap.
    daily = POLICY.model_copy(
        update={
            "window_seconds": 86_400,
            "privacy": POLICY.privacy.model_copy(update={"daily_epsilon": 2.0}),
        }
    )
    mono = FakeMonotonic()
    clock.now = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    qw = _telemetry(tmp_path, ingest, clock, daily, mono)
    midnight = datetime(2026, 3, 3, tzinfo=UTC)
    # Released 5 s after its window's end...
    mono.advance(3605)
    clock.now = midnight + timedelta(seconds=5)
    (first,) = qw.collect(clock.now)
    assert first.aggregates
    assert not first.suppressed
    # ...the next 1 s after its end, 4 s short of 24 real hours: it waits.
    mono.advance(86_396)
    clock.now = midnight + timedelta(days=1, seconds=1)
    assert qw.collect(clock.now) == []
    mono.advance(4)
    clock.now += timedelta(seconds=4)
    (second,) = qw.collect(clock.now)
    assert second.aggregates
    assert not second.suppressed
    assert MAX_HOLD_SECONDS < 3600  # a wait longer than this is a suppression instead


def _telemetry(
    tmp_path: Path, ingest: MemoryIngest, clock: FakeClock, policy: Policy, mono: FakeMonotonic
) -> Telemetry:
    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=policy,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=tmp_path / "state",
            clock=clock,
            monotonic=mono,
            mode="manual",
        )
    )
    for tier in (Tier.HEALTH, Tier.PERFORMANCE):
        qw.grant_consent(tier)
    return qw


def _http_ingest(
    ingest: MemoryIngest, server_now: Callable[[], datetime]
) -> tuple[HttpTransport, list[str]]:
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        headers = {"date": format_datetime(server_now(), usegmt=True)}
        if request.method != "POST":
            return httpx.Response(404, headers=headers)
        result: BatchResult = ingest.handle(EnvelopeBatch.model_validate_json(request.content))
        return httpx.Response(202, content=result.model_dump_json(), headers=headers)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    return HttpTransport("https://ingest.example", client=client), methods


def test_windows_and_send_times_follow_the_ingests_clock(
    make_telemetry: MakeTelemetry, ingest: MemoryIngest, clock: FakeClock
) -> None:
    mono = FakeMonotonic()
    ahead = timedelta(days=3)  # the device's wall clock runs three days ahead
    server = clock.now

    def elapse(delta: timedelta) -> None:
        nonlocal server
        server += delta
        clock.now = server + ahead
        mono.advance(delta.total_seconds())

    transport, methods = _http_ingest(ingest, lambda: server)
    clock.now = server + ahead
    qw = make_telemetry(transport=transport, monotonic=mono)
    opened = clock.now.replace(minute=0)  # the window it opened, three days ahead
    qw.counter("app.starts").add(1)
    # The device asks for the ingest's time before any window closes: none is due.
    assert qw.collect() == []
    assert methods == ["HEAD"]
    # Hours pass: by the wall clock five windows ended, by the ingest's clock none.
    elapse(timedelta(hours=5))
    assert qw.collect() == []
    # Once the ingest's clock reaches the end of the open window, it alone is released.
    elapse(opened + timedelta(hours=1, seconds=30) - server)
    (envelope,) = qw.collect()
    assert envelope.window_end == opened + timedelta(hours=1)
    assert qw.flush()
    (sent,) = ingest.envelopes
    skew = timedelta(minutes=5)  # the ingest's rule (ingest._verify)
    assert sent.window_end <= server + skew
    assert sent.window_end - skew <= sent.sent_at <= server + skew
    assert methods == ["HEAD", "POST"]


def test_the_http_transport_reads_the_ingests_date(ingest: MemoryIngest) -> None:
    when = datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC)
    transport, _ = _http_ingest(ingest, lambda: when)
    assert transport.server_time() is None
    transport.probe_time()
    learned = transport.server_time()
    assert learned is not None
    assert learned[0] == when
    # An answer without a Date keeps the last one.
    bare = HttpTransport(
        "https://ingest.example",
        client=httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(404))),
    )
    bare.probe_time()
    assert bare.server_time() is None


def test_a_policy_switch_mid_day_never_raises_the_days_cap(
    make_telemetry: MakeTelemetry, ingest: MemoryIngest, clock: FakeClock, tmp_path: Path
) -> None:
    state = tmp_path / "device"
    qw = make_telemetry(state_dir=state)
    _spend_the_day(qw, clock)
    qw.shutdown(carry_open_window=False)
    # The same device, the same day, under a policy with eight times the cap.
    generous = POLICY.model_copy(
        update={"privacy": POLICY.privacy.model_copy(update={"daily_epsilon": 64.0})}
    )
    assert generous.content_hash != POLICY.content_hash
    again = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=generous,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(ingest.handle),
            state_dir=state,
            clock=clock,
            mode="manual",
        )
    )
    for _ in range(6):
        again.counter("app.starts").add(1)
        (envelope,) = again.collect(clock.advance(hours=1))
        assert not envelope.aggregates
        assert envelope.suppressed == dict.fromkeys(SIGNALS, 1)
    assert again.privacy_spent()[0] == CAP
    assert again.flush()
    assert _loss(ingest.envelopes) == CAP
    again.shutdown(carry_open_window=False)


def test_the_operator_resets_a_stopped_devices_ledger_from_the_command_line(
    make_telemetry: MakeTelemetry, clock: FakeClock, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from quietwire.cli import app

    state = tmp_path / "device"
    policy_file = dump_policy(POLICY, tmp_path / "policy.yaml")
    qw = make_telemetry(state_dir=state)
    _spend_the_day(qw, clock)
    runner = CliRunner()
    args = ["ledger-reset", "--state-dir", str(state), "--policy", str(policy_file)]
    # While the app runs it holds the ledger: refused, one line, exit 2.
    running = runner.invoke(app, [*args, "--reason", "journal lost"])
    assert running.exit_code == 2
    assert "in use" in running.stderr
    qw.shutdown(carry_open_window=False)
    # A sound ledger is not reset by mistake (it would spend the day's budget).
    sound = runner.invoke(app, [*args, "--reason", "journal lost"])
    assert sound.exit_code == 2
    assert "sound" in sound.stderr
    _damage(state / "privacy_ledger.journal", "emptied")
    done = runner.invoke(app, [*args, "--reason", "journal emptied by a cleanup tool"])
    assert done.exit_code == 0, done.stderr
    assert "charges were removed" in done.stdout
    again = make_telemetry(state_dir=state)
    assert again.ledger_problem() is None
    (envelope,) = again.collect(clock.advance(hours=1))
    assert not envelope.aggregates  # the reset spent the rest of the day
    nowhere = ["ledger-reset", "--state-dir", str(tmp_path / "nope"), "--reason", "x"]
    missing = runner.invoke(app, nowhere)
    assert missing.exit_code == 2
    assert "not a device's state directory" in missing.stderr
