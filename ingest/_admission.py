"""Per-device admission: order, one contribution per window, and the daily epsilon cap.

Pure logic; `ingest._device_ledger` keeps the state durable and applies these rules in
one transaction with the charge. An envelope that passed verification is admitted only
if, against what this ingest already accepted from its device:

- its `sequence` is above the last one (`sequence_not_increasing`): the client numbers
  envelopes in order and sends them oldest first, so a lower or equal number is a
  replay or a second copy of the device's state;
- its window starts at or after the end of the last window (`duplicate_window`): the
  client never releases overlapping windows, so an overlap is a second envelope for
  the same device and window (two state directories sharing one key, say). Every
  window is exactly one aligned policy window (`ingest._windows`, checked before), so
  this is also one local release per device and policy window;
- its Prio3 reports are of a later policy window than the device's last reports
  (`duplicate_window`): one contribution per device, signal and batch;
- its policy can be priced (`policy_not_served`), and its charge fits the device's
  daily budget (`budget_exceeded`): the day is the ingest's (receipt time, never the
  device's window time, which the device chooses), and the cap is the strictest daily
  cap of every policy the device's accepted envelopes named that day, so switching
  policy mid-day never raises the day's cap.

A retry of an envelope already admitted (in the device's last request) is not judged
again: it is published again, uncharged (`Repeated`). A retry is recognised by its
`retry_key`: envelope id, sequence, window, policy and charge, so a device cannot reuse
an admitted id for an envelope that releases more, or for another window.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ingest._pricing import EnvelopePrice
from ingest._windows import AlignedWindow
from policies import EXACT_EPSILON
from schemas import EnvelopeV1, RejectReason

__all__ = [
    "Admitted",
    "Candidate",
    "DaySpend",
    "Decision",
    "DeviceMark",
    "Refused",
    "Repeated",
    "decide",
    "retry_key",
]


@dataclass(frozen=True, slots=True)
class DeviceMark:
    """What the ingest remembers of a device between envelopes."""

    sequence: int
    window_end: datetime
    report_batch_end: datetime | None
    recent: frozenset[bytes]
    """`retry_key`s of the device's last request that admitted any: what a retry sends."""


@dataclass(frozen=True, slots=True)
class DaySpend:
    """A device's epsilon spend on one ingest day, and that day's strictest cap."""

    spent: Decimal = Decimal(0)
    cap: Decimal | None = None
    """None: no envelope of a served policy accepted yet that day."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A verified envelope waiting for admission."""

    envelope: EnvelopeV1
    price: EnvelopePrice | None
    """None: it releases under a policy the ingest cannot price."""
    batch: AlignedWindow | None
    """The policy window its Prio3 reports belong to; None without reports."""
    key: bytes = field(init=False, repr=False, compare=False)
    """Its `retry_key`, computed once (admission and the ledger's record both need it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", retry_key(self))


@dataclass(frozen=True, slots=True)
class Admitted:
    """Admitted and charged: the device's state after it."""

    mark: DeviceMark
    spend: DaySpend
    charged: Decimal


@dataclass(frozen=True, slots=True)
class Repeated:
    """A retry of an envelope already admitted: publish again, charge nothing."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Not admitted; nothing is charged and the device's state does not move."""

    reason: RejectReason
    detail: str


Decision = Admitted | Repeated | Refused


def _order_problem(
    mark: DeviceMark, env: EnvelopeV1, batch: AlignedWindow | None
) -> Refused | None:
    if env.sequence <= mark.sequence:
        return Refused(
            RejectReason.SEQUENCE_NOT_INCREASING,
            f"sequence {env.sequence} is not above {mark.sequence}, the last this ingest "
            "accepted from the device",
        )
    if env.window_start < mark.window_end:
        return Refused(
            RejectReason.DUPLICATE_WINDOW,
            f"the window starting {env.window_start.isoformat()} overlaps one already "
            f"accepted from this device (up to {mark.window_end.isoformat()})",
        )
    last_batch_end = mark.report_batch_end
    if batch is not None and last_batch_end is not None and batch.start < last_batch_end:
        return Refused(
            RejectReason.DUPLICATE_WINDOW,
            f"this device already sent Prio3 reports for the policy window starting "
            f"{batch.start.isoformat()}: one contribution per device, signal and window",
        )
    return None


def _strictest(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def retry_key(candidate: Candidate) -> bytes:
    """16 bytes naming what the ledger decided on: a resend with the same key is the
    same admission; the same envelope id with anything else changed is not."""
    env, price = candidate.envelope, candidate.price
    facts = (
        env.envelope_id.hex,
        env.sequence,
        env.window_start.isoformat(),
        env.window_end.isoformat(),
        env.policy_hash,
        None if price is None else str(price.epsilon),
        None if candidate.batch is None else candidate.batch.start.isoformat(),
    )
    return hashlib.blake2b(repr(facts).encode(), digest_size=16).digest()


def decide(
    mark: DeviceMark | None, spend: DaySpend, candidate: Candidate, *, recent: frozenset[bytes]
) -> Decision:
    """Admit or refuse `candidate` given its device's state; see the module docstring.

    `recent`: `retry_key`s that count as already admitted (the device's last request,
    and the current one so far).
    """
    env = candidate.envelope
    if candidate.key in recent:
        return Repeated()
    if mark is not None and (problem := _order_problem(mark, env, candidate.batch)):
        return problem
    price = candidate.price
    if price is None:
        return Refused(
            RejectReason.POLICY_NOT_SERVED,
            f"releases under policy {env.policy_hash[:12]}…, which this ingest knows by hash "
            "only: it cannot charge them to the device's budget",
        )
    cap = _strictest(spend.cap, price.daily_cap)
    spent = EXACT_EPSILON.add(spend.spent, price.epsilon)
    if price.epsilon and cap is not None and spent > cap:
        return Refused(
            RejectReason.BUDGET_EXCEEDED,
            f"epsilon {price.epsilon} would bring the device's spend today (ingest clock, "
            f"UTC) to {spent}, over the cap of {cap} (the strictest daily cap of the "
            "policies it used today)",
        )
    batch = candidate.batch
    last_batch_end = mark.report_batch_end if mark is not None else None
    return Admitted(
        DeviceMark(
            sequence=env.sequence,
            window_end=env.window_end if mark is None else max(mark.window_end, env.window_end),
            report_batch_end=batch.end if batch is not None else last_batch_end,
            recent=frozenset(),
        ),
        DaySpend(spent, cap),
        price.epsilon,
    )
