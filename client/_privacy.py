"""The privacy gate every release passes: consent for its tier, whether the device's key
may send the tier at all, then the ledger's budget.

`PrivacyGate` owns the device's `ConsentStore` (`<state_dir>/consent.json`, records
signed by the device key) and `PrivacyLedger` (`<state_dir>/privacy_ledger.journal`).
Per signal and window, `admit_window` answers, in this order:

- `NO_CONSENT`: the tier has no current grant; the window's data is discarded, nothing
  is charged and nothing is said about it.
- `NEEDS_TPM`: the device signs with a software key and the attestation policy refuses
  the tier from software keys (`software_tiers`): the ingest would refuse the envelope,
  so nothing is released and, above all, nothing is charged; counted locally as
  `tier_requires_tpm`. This check comes before the charge on purpose: budget spent on a
  release that is never sent would be lost to the user for nothing.
- `SUPPRESSED`: the charge would cross a cap (the day's, the last 24 real hours', the
  lifetime's), or the ledger refuses or cannot be written: nothing is released and the
  suppression is reported as a count.
- `RELEASE`: the charge is durable; the release may be made.

A release is charged its worst-case privacy loss (`policies.release_epsilon`, the price
the ingest's ledger uses too; checked at start-up against OpenDP's composed privacy
maps, `client._loss`), to the UTC day its window starts in (the day whose data it
describes) and at the real time of the charge (`client._clock`). The ledger's MACs are
keyed with a key derived from the spool key (`<state_dir>/spool.key`), so an edited
line is told from a sound one.

The ledger's state depends only on which windows were released and when
(every consented signal is released every window, data or not), never on the values
recorded, so a suppression count is a function of envelope metadata the ingest sees
anyway (window times, consented tiers) and costs no privacy budget.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Literal

from client._clock import BudgetClock, ClockReading
from client._consent import ConsentStore, SignedConsentRecord
from client._drops import DropCounter, DropReason
from client._envelope import DeviceState
from client._keys import KeyStore
from client._ledger import LedgerError, LedgerEvidence, PrivacyLedger
from client._loss import check_charge
from client._spool import Spool, _load_or_create_key
from policies import Policy, release_epsilon
from schemas import Tier

__all__ = ["MAX_HOLD_SECONDS", "Admission", "PrivacyGate", "reset_device_ledger"]

_log = logging.getLogger("client")

MAX_HOLD_SECONDS = 900.0
"""How long a due window may wait for the last 24 real hours to make room for it.

Windows close a few seconds after their end, never at exactly the same offset: a day's
release may come a little less than 24 hours after the last, and would be suppressed by
the real-time cap. It waits instead, up to this long; a window further ahead of the
budget (a wall clock moved forward) is released at once and suppressed by the cap."""


class Admission(Enum):
    """What the gate says about one signal's release for one window."""

    RELEASE = "release"
    SUPPRESSED = "suppressed"
    NO_CONSENT = "no_consent"
    NEEDS_TPM = "needs_tpm"


class PrivacyGate:
    """Consent and budget for one device; see the module docstring."""

    CONSENT_FILE = "consent.json"
    LEDGER_FILE = "privacy_ledger.journal"

    def __init__(
        self,
        state_dir: Path,
        policy: Policy,
        key_store: KeyStore,
        clock: Callable[[], datetime],
        drops: DropCounter,
        software_tiers: Iterable[Tier] = tuple(Tier),
        *,
        budget_clock: BudgetClock | None = None,
        evidence: LedgerEvidence | None = None,
    ) -> None:
        self._drops = drops
        self.software_tiers = frozenset(software_tiers)
        self._policy = policy
        self.budget_clock = budget_clock or BudgetClock(clock, None)
        self.consent = ConsentStore(
            state_dir / self.CONSENT_FILE,
            key_store.sign,
            policy,
            clock=clock,
        )
        self.charges = {name: float(release_epsilon(spec)) for name, spec in policy.signals.items()}
        for name, spec in policy.signals.items():
            check_charge(name, spec, policy.privacy.mechanisms, self.charges[name])
        self.ledger = PrivacyLedger(
            state_dir / self.LEDGER_FILE,
            policy.privacy,
            key=_ledger_key(state_dir),
            policy_hash=policy.content_hash,
            evidence=evidence or LedgerEvidence(),
        )
        if self.ledger.problem is not None:
            _log.error("privacy ledger refused: %s", self.ledger.problem)

    def consented(self) -> list[Tier]:
        """Tiers with a current grant, in a fixed order."""
        return [t for t in Tier if self.consent.allows(t)]

    def may_send(self, tier: Tier, assurance: Literal["software", "tpm"]) -> bool:
        """Whether the ingest accepts `tier` from a key of this assurance."""
        return assurance == "tpm" or tier in self.software_tiers

    def admit_window(
        self,
        signals: Sequence[tuple[str, Tier]],
        window_start: datetime,
        *,
        assurance: Literal["software", "tpm"],
        now: ClockReading | None = None,
    ) -> list[Admission]:
        """The admission of each `(signal, tier)` for one window, in order.

        Consent first, then the key's assurance (no charge without either), then the
        ledger, at the signal's charge (`charges`), at real time `now` (default: the
        budget clock's reading for the window's start, as a simulator's clock): every
        charge of the window is made durable in one write and one fsync.
        """
        allowed = set(self.consented())
        admissions: list[Admission | None] = []
        charges: list[tuple[str, float]] = []
        for signal, tier in signals:
            if tier not in allowed:
                admissions.append(Admission.NO_CONSENT)
            elif not self.may_send(tier, assurance):
                self._drops.add(DropReason.TIER_REQUIRES_TPM)
                admissions.append(Admission.NEEDS_TPM)
            else:
                admissions.append(None)  # decided by the ledger below
                charges.append((signal, self.charges[signal]))
        reading = now if now is not None else self.budget_clock.read(window_start)
        try:
            granted = iter(self.ledger.try_charge_many(charges, window_start, now=reading))
        except LedgerError:
            # Nothing may be released without a durable charge.
            self._drops.add(DropReason.LEDGER_FAILED, len(charges))
            granted = iter([False] * len(charges))
        return [
            a if a is not None else Admission.RELEASE if next(granted) else Admission.SUPPRESSED
            for a in admissions
        ]

    def hold_seconds(self, now: ClockReading) -> float:
        """How long due windows should wait for room in the last 24 real hours (0: none).

        The room asked for is one window of every consented signal; a wait longer than
        `MAX_HOLD_SECONDS` (or one the ledger cannot bound) is not held: the windows are
        released and the ledger suppresses what does not fit.
        """
        planned = self._planned_charge()
        if planned <= 0.0 or self.ledger.problem is not None:
            return 0.0
        wait = self.ledger.seconds_until_room(planned, now)
        return wait if wait is not None and wait <= MAX_HOLD_SECONDS else 0.0

    def _planned_charge(self, skip: frozenset[Tier] = frozenset()) -> float:
        """One window's charge of every consented signal (outside the tiers `skip`)."""
        tiers = set(self.consented()) - skip
        return sum(self.charges[n] for n, s in self._policy.signals.items() if s.tier in tiers)

    def late_reading(
        self, cut: ClockReading, now: ClockReading, *, skip: frozenset[Tier] = frozenset()
    ) -> ClockReading:
        """The real time a late carried window is charged as of (`client._carry`).

        Its data ended at `cut` (the shutdown) and it is released at `now`: any instant
        between is one at which the release could have been made. The earliest with
        room in the last 24 real hours for one window of every consented signal (but
        those of the tiers `skip`, which it does not release) is chosen: `cut` itself,
        or the moment an earlier charge leaves those 24 hours, so that a shutdown a few
        minutes earlier than the day before does not cost the window its release. If
        room comes only after `now`, `now` (the ledger then suppresses what does not
        fit). An instant after `cut` is read on `cut`'s clock: as many seconds later on
        its boot's monotonic clock and on the wall clock.
        Never before the latest charge's stamp (the ledger prunes against its stamps,
        which must not go back): a cut behind it (a wall clock set back) is charged now.
        """
        if cut.wall < self.ledger.latest_wall:
            # A charge is stamped after the cut (a wall clock set back since): a stamp
            # before it could miss charges already pruned against it. Charged now.
            return now
        planned = self._planned_charge(skip)
        if planned <= 0.0 or self.ledger.problem is not None:
            return cut
        wait = self.ledger.seconds_until_room(planned, cut)
        if wait is None:
            return now
        if wait <= 0.0:
            return cut
        elapsed = now.seconds_since(cut)
        if elapsed is None:  # another boot: only the wall clock can tell
            elapsed = now.wall - cut.wall
        if wait > elapsed:
            return now
        return ClockReading(cut.wall + wait, cut.boot, cut.mono + wait)

    def reset_ledger(self, at: datetime, *, reason: str) -> None:
        """Acknowledge a lost or damaged ledger: see `PrivacyLedger.reset`."""
        self.ledger.reset(at, now=self.budget_clock.read(at), reason=reason)
        _log.warning("privacy ledger reset by the operator: %s", reason)

    def grant(self, tier: Tier) -> bool:
        """Record a grant; True if the tier was not allowed before (a new decision)."""
        before = self.consent.allows(tier)
        self.consent.grant(tier)
        return not before

    def revoke(self, tier: Tier) -> SignedConsentRecord | None:
        """Record a revocation; the new record, or None if the tier was already revoked."""
        record, new = self.consent.decide(tier, granted=False)
        return record if new else None

    def close(self) -> None:
        """Release the ledger's files."""
        self.ledger.close()

    def reset_after_fork(self) -> None:
        """Fresh locks in a forked child: a parent thread may have held one at fork time."""
        self.consent.reset_after_fork()
        self.ledger.reset_after_fork()


def _ledger_key(state_dir: Path) -> bytes:
    """The ledger's MAC key: derived from the spool key, which the device keeps secret
    (mode 0600) and which never leaves it."""
    spool_key = _load_or_create_key(state_dir / Spool.KEY_FILE)
    return hashlib.blake2b(b"privacy-ledger", key=spool_key, person=b"qw-ledger-key").digest()


def reset_device_ledger(
    state_dir: Path, policy: Policy, reason: str, *, force: bool = False
) -> LedgerError | None:
    """Operator action on a device's state directory, with its app stopped
    (`quietwire ledger-reset`): acknowledge a lost or damaged ledger, as
    `Telemetry.reset_ledger` does (`PrivacyLedger.reset`: the day and the last 24 real
    hours fully spent). Returns the problem acknowledged.

    Raises `ValueError` for a directory that is not a device's or, unless `force`, a
    ledger that is sound (a reset spends the day's budget); `LedgerError` if the ledger
    is in use (the app is running) or cannot be written.
    """
    known = (state_dir / DeviceState.FILE_NAME, state_dir / PrivacyGate.LEDGER_FILE)
    if not any(path.is_file() for path in known):
        raise ValueError(f"{state_dir}: not a device's state directory (no state, no ledger)")
    clock = BudgetClock(lambda: datetime.now(UTC))
    with PrivacyLedger(
        state_dir / PrivacyGate.LEDGER_FILE,
        policy.privacy,
        key=_ledger_key(state_dir),
        policy_hash=policy.content_hash,
        evidence=DeviceState(state_dir).ledger_evidence(),
    ) as ledger:
        problem = ledger.problem
        if problem is None and not force:
            raise ValueError(
                f"{state_dir}: the privacy ledger is sound; a reset would spend today's "
                "budget (force it to reset anyway)"
            )
        at = clock.now()
        ledger.reset(at, now=clock.read(at), reason=reason)
    _log.warning("privacy ledger of %s reset by the operator: %s", state_dir, reason)
    return problem
