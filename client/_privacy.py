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
- `SUPPRESSED`: the charge would cross the daily or lifetime cap (or the ledger cannot
  be written): nothing is released and the suppression is reported as a count.
- `RELEASE`: the charge is durable; the release may be made.

A release is charged to the UTC day its window starts in: the day whose data it
describes. The ledger's state depends only on which windows were released and when
(every consented signal is released every window, data or not), never on the values
recorded, so a suppression count is a function of envelope metadata the ingest sees
anyway (window times, consented tiers) and costs no privacy budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Literal

from client._consent import ConsentStore, SignedConsentRecord
from client._drops import DropCounter, DropReason
from client._keys import KeyStore
from client._ledger import LedgerError, PrivacyLedger
from policies import Policy
from schemas import Tier

__all__ = ["Admission", "PrivacyGate"]


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
    ) -> None:
        self._drops = drops
        self.software_tiers = frozenset(software_tiers)
        self.consent = ConsentStore(
            state_dir / self.CONSENT_FILE,
            key_store.sign,
            policy,
            clock=clock,
        )
        self.ledger = PrivacyLedger(state_dir / self.LEDGER_FILE, policy.privacy)

    def consented(self) -> list[Tier]:
        """Tiers with a current grant, in a fixed order."""
        return [t for t in Tier if self.consent.allows(t)]

    def may_send(self, tier: Tier, assurance: Literal["software", "tpm"]) -> bool:
        """Whether the ingest accepts `tier` from a key of this assurance."""
        return assurance == "tpm" or tier in self.software_tiers

    def admit_window(
        self,
        signals: Sequence[tuple[str, Tier, float]],
        window_start: datetime,
        *,
        assurance: Literal["software", "tpm"],
    ) -> list[Admission]:
        """The admission of each `(signal, tier, epsilon)` for one window, in order.

        Consent first, then the key's assurance (no charge without either), then the
        ledger: every charge of the window is made durable in one write and one fsync.
        """
        allowed = set(self.consented())
        admissions: list[Admission | None] = []
        charges: list[tuple[str, float]] = []
        for signal, tier, epsilon in signals:
            if tier not in allowed:
                admissions.append(Admission.NO_CONSENT)
            elif not self.may_send(tier, assurance):
                self._drops.add(DropReason.TIER_REQUIRES_TPM)
                admissions.append(Admission.NEEDS_TPM)
            else:
                admissions.append(None)  # decided by the ledger below
                charges.append((signal, epsilon))
        try:
            granted = iter(self.ledger.try_charge_many(charges, window_start))
        except LedgerError:
            # Nothing may be released without a durable charge.
            self._drops.add(DropReason.LEDGER_FAILED, len(charges))
            granted = iter([False] * len(charges))
        return [
            a if a is not None else Admission.RELEASE if next(granted) else Admission.SUPPRESSED
            for a in admissions
        ]

    def grant(self, tier: Tier) -> bool:
        """Record a grant; True if the tier was not allowed before (a new decision)."""
        before = self.consent.allows(tier)
        self.consent.grant(tier)
        return not before

    def revoke(self, tier: Tier) -> SignedConsentRecord | None:
        """Record a revocation; the new record, or None if the tier was already revoked."""
        current = self.consent.current().get(tier)
        record = self.consent.revoke(tier)
        return None if current is not None and record == current else record

    def close(self) -> None:
        """Release the ledger's files."""
        self.ledger.close()

    def reset_after_fork(self) -> None:
        """Fresh locks in a forked child: a parent thread may have held one at fork time."""
        self.consent.reset_after_fork()
        self.ledger.reset_after_fork()
