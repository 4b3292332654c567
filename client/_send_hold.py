"""When spooled envelopes may leave: never ahead of the ingest's clock, and not again
on an ingest day whose budget refused them.

Pure logic: the caller passes the ingest's time (`client._clock.BudgetClock.ingest_now`,
None while the device has not heard from its ingest) and its own.

- **Ahead of the ingest.** The ingest refuses an envelope whose window ends more than
  its allowed skew after its own clock (`clock_skew`, `ingest._verify`). Envelopes
  built offline with a wall clock ahead are held in the spool until the ingest's time
  catches up; one whose wait would outlast a tier's retention cannot be delivered in
  time, and that tier is stripped from it (`Spool.expire_ahead`). While the ingest's
  time is unknown nothing is held: sending is how the device learns it.
- **The ingest's daily budget.** The ingest charges each device's envelopes to the UTC
  day it receives them, up to one day's cap (`budget_exceeded`). A backlog from days
  offline is accepted one day's worth per ingest day: what is refused was already
  charged on the device, so it is kept and sent again after the ingest's next UTC
  midnight, never deleted for that.
- **One request never lets a later envelope pass an earlier one.** The ingest admits a
  device's envelopes in sequence order; an envelope accepted after one that was
  refused leaves the refused one behind for good (`sequence_not_increasing`). So a
  request carries only envelopes that the budget refuses together or not at all: one
  policy, each releasing at least the signals of the one before it
  (`budget_run`); the ingest admits in order, so after the first refused one every
  later one would cost at least as much under the same cap.

Envelopes leave oldest first, so a held envelope holds every later one behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from uuid import UUID

from schemas import EnvelopeV1

__all__ = [
    "INGEST_MAX_SKEW",
    "Held",
    "SendHold",
    "budget_run",
    "next_utc_day",
    "released_signals",
]

INGEST_MAX_SKEW = timedelta(seconds=300)
"""How far ahead of its clock the ingest accepts a window's end (its default
`QUIETWIRE_INGEST_MAX_CLOCK_SKEW_SECONDS`)."""


@dataclass(frozen=True, slots=True)
class Held:
    """Why nothing more is sent now, and the ingest time to try again at."""

    reason: str
    until: datetime
    on_ingest_clock: bool
    """False when `until` is on the device's clock (the ingest's time is unknown)."""


def next_utc_day(t: datetime) -> datetime:
    """The first instant of the UTC day after `t`'s."""
    day = t.astimezone(UTC).date() + timedelta(days=1)
    return datetime.combine(day, time(), tzinfo=UTC)


def released_signals(envelope: EnvelopeV1) -> frozenset[str]:
    """The signals an envelope releases (what the ingest charges it for)."""
    tasks = {r.task.partition("/")[0] for r in envelope.reports}
    return frozenset({a.signal for a in envelope.aggregates} | tasks)


def budget_run(envelopes: Sequence[EnvelopeV1]) -> int:
    """How many of `envelopes` (oldest first) one request may carry: a run of one
    policy in which each envelope releases every signal the previous one did, so each
    costs at least as much as the one before under the same daily cap."""
    if not envelopes:
        return 0
    policy = envelopes[0].policy_hash
    last = released_signals(envelopes[0])
    for i, envelope in enumerate(envelopes[1:], start=1):
        signals = released_signals(envelope)
        if envelope.policy_hash != policy or not signals >= last:
            return i
        last = signals
    return len(envelopes)


class SendHold:
    """The sender's hold on spooled envelopes; see the module docstring.

    Used by the one thread that sends at a time (the worker, the shutdown's sender, or
    manual mode's caller).
    """

    __slots__ = ("_budget_until", "_noted", "_skew")

    _MAX_NOTED = 4096

    def __init__(self, skew: timedelta = INGEST_MAX_SKEW) -> None:
        self._skew = skew
        self._budget_until: Held | None = None
        self._noted: set[UUID] = set()

    @property
    def skew(self) -> timedelta:
        """How far ahead of the ingest's clock a window may end."""
        return self._skew

    def budget_refused(self, ingest_now: datetime | None, local_now: datetime) -> Held:
        """The ingest refused an envelope for today's budget: hold until its next day
        (the device's next day while the ingest's time is unknown)."""
        held = Held(
            "budget_exceeded",
            next_utc_day(ingest_now or local_now),
            on_ingest_clock=ingest_now is not None,
        )
        self._budget_until = held
        return held

    def check(self, ingest_now: datetime | None, local_now: datetime) -> Held | None:
        """The budget hold in force now, if any."""
        held = self._budget_until
        if held is None:
            return None
        now = ingest_now if held.on_ingest_clock and ingest_now is not None else local_now
        if now < held.until:
            return held
        self._budget_until = None
        return None

    def ahead(self, envelope: EnvelopeV1, ingest_now: datetime | None) -> bool:
        """Whether the ingest would refuse `envelope` now as ahead of its clock."""
        return ingest_now is not None and envelope.window_end > ingest_now + self._skew

    def sendable(self, envelopes: Sequence[EnvelopeV1], ingest_now: datetime | None) -> int:
        """How many of `envelopes` (oldest first) may go in one request now: up to the
        first one ahead of the ingest's clock, within one `budget_run`."""
        for i, envelope in enumerate(envelopes):
            if self.ahead(envelope, ingest_now):
                return min(i, budget_run(envelopes))
        return budget_run(envelopes)

    def ahead_until(self, envelope: EnvelopeV1) -> Held:
        """The hold of an envelope ahead of the ingest's clock: until it is not."""
        return Held("clock_ahead", envelope.window_end - self._skew, on_ingest_clock=True)

    def first_hold(self, envelope: EnvelopeV1) -> bool:
        """True the first time `envelope` is held ahead of the ingest's clock (so it
        is counted once, however often it is tried)."""
        if envelope.envelope_id in self._noted:
            return False
        if len(self._noted) >= self._MAX_NOTED:
            self._noted.clear()  # bounded: at worst an envelope is counted twice
        self._noted.add(envelope.envelope_id)
        return True
