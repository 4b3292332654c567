"""The send hold's rules on plain envelopes: which of the oldest may go in one request,
and until when nothing goes (`client._send_hold`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

from client._send_hold import SendHold, budget_run, next_utc_day
from schemas import AppInfo, CounterAggregate, EnvelopeV1, NoiseSpec, Tier

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _envelope(
    sequence: int, signals: tuple[str, ...] = ("a", "b"), policy: str = "0" * 64
) -> EnvelopeV1:
    start = T0 + sequence * HOUR
    noise = NoiseSpec(mechanism="laplace", scale=1.0, epsilon=0.5, lower=0.0, upper=1.0)
    return EnvelopeV1(
        envelope_id=uuid4(),
        device_id="dev-" + "0" * 32,
        sequence=sequence,
        window_start=start,
        window_end=start + HOUR,
        sent_at=start + HOUR,
        region="eu-test",
        policy_hash=policy,
        app=AppInfo(name="a", version="1"),
        aggregates=[
            CounterAggregate(signal=s, tier=Tier.HEALTH, value=0.0, noise=noise) for s in signals
        ],
        consent_hash="c0" * 32,
        consented_tiers=[Tier.HEALTH],
    )


def test_a_request_carries_a_run_the_budget_refuses_together_or_not_at_all() -> None:
    same = [_envelope(i) for i in range(3)]
    assert budget_run(same) == 3
    assert budget_run([]) == 0
    # A cheaper envelope after a dearer one could be admitted past a refused one.
    assert budget_run([*same, _envelope(3, ("a",)), _envelope(4)]) == 3
    # A cheaper one first is fine: every later one costs at least as much.
    assert budget_run([_envelope(0, ("a",)), *same[1:]]) == 3
    # Another policy: another cap.
    assert budget_run([*same, _envelope(3, policy="1" * 64)]) == 3


def test_nothing_goes_that_ends_ahead_of_the_ingests_clock() -> None:
    hold = SendHold(timedelta(minutes=5))
    envelopes = [_envelope(i) for i in range(4)]  # windows end 10:00, 11:00, 12:00, 13:00
    assert hold.sendable(envelopes, None) == 4  # the ingest's time unknown: not judged
    assert hold.sendable(envelopes, T0 + 2 * HOUR) == 2
    assert hold.sendable(envelopes, T0 + 2 * HOUR - timedelta(minutes=56)) == 1
    assert hold.sendable(envelopes, T0) == 0
    held = hold.ahead_until(envelopes[0])
    assert held.until == T0 + HOUR - timedelta(minutes=5)
    assert hold.first_hold(envelopes[0])
    assert not hold.first_hold(envelopes[0])


def test_a_budget_refusal_holds_until_the_ingests_next_utc_day() -> None:
    hold = SendHold()
    device_now = T0 + timedelta(days=3)  # the device's clock is not the ingest's
    held = hold.budget_refused(T0, device_now)
    assert held.until == datetime(2026, 3, 3, tzinfo=UTC)
    assert hold.check(T0 + 14 * HOUR, device_now) == held
    assert hold.check(T0 + 15 * HOUR, device_now) is None  # the ingest's midnight
    assert hold.check(T0 + 15 * HOUR, device_now) is None
    # Without the ingest's time, on the device's own day.
    held = hold.budget_refused(None, T0)
    assert not held.on_ingest_clock
    assert hold.check(None, T0 + 14 * HOUR) == held
    assert hold.check(None, T0 + 15 * HOUR) is None


def test_the_next_utc_day() -> None:
    assert next_utc_day(T0) == datetime(2026, 3, 3, tzinfo=UTC)
    assert next_utc_day(datetime(2026, 3, 2, tzinfo=UTC)) == datetime(2026, 3, 3, tzinfo=UTC)
    # The UTC day, whatever zone the time is given in (22:00 at UTC-5 is 03:00 UTC).
    west = datetime(2026, 3, 2, 22, tzinfo=timezone(timedelta(hours=-5)))
    assert next_utc_day(west) == datetime(2026, 3, 4, tzinfo=UTC)
