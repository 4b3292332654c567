"""The ledger fails closed: a missing, truncated, emptied, corrupt or edited journal of a
device that has released before refuses every charge until an operator resets it; a
policy change never raises what a day may still spend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from client._clock import ClockReading
from client._ledger import LedgerError, LedgerEvidence, PrivacyLedger
from policies import MechanismChoice, PrivacyCaps
from schemas import Mechanism

NOON = datetime(2026, 11, 27, 12, tzinfo=UTC)
KEY = b"k" * 32


def _caps(daily: float, lifetime: float = 1000.0) -> PrivacyCaps:
    laplace = Mechanism.DISCRETE_LAPLACE
    return PrivacyCaps(
        accounting="pure_dp",
        daily_epsilon=daily,
        lifetime_epsilon=lifetime,
        mechanisms=MechanismChoice(
            counter=laplace, histogram_counts=laplace, histogram_sum=Mechanism.LAPLACE
        ),
    )


CAPS = _caps(8.0)


def _spend(path: Path, *charges: float) -> Decimal:
    """Charge, close, and return the lifetime mark the device state would keep."""
    with PrivacyLedger(path, CAPS, key=KEY) as ledger:
        for eps in charges:
            assert ledger.try_charge("a", eps, NOON)
        return ledger.lifetime_mark()


def _reopen(path: Path, evidence: LedgerEvidence) -> PrivacyLedger:
    return PrivacyLedger(path, CAPS, key=KEY, evidence=evidence)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("delete", "missing or empty"),
        ("truncate", "missing or empty"),
        ("header only", "charges were removed"),
        ("drop last charge", "charges were removed"),
    ],
)
def test_a_rolled_back_journal_refuses_every_charge(
    tmp_path: Path, damage: str, message: str
) -> None:
    path = tmp_path / "ledger"
    mark = _spend(path, 4.0, 4.0)
    evidence = LedgerEvidence(sequence=1, spent=mark)
    lines = path.read_bytes().splitlines(keepends=True)
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(b"")
    elif damage == "header only":
        path.write_bytes(lines[0])
    else:
        path.write_bytes(b"".join(lines[:-1]))
    with _reopen(path, evidence) as ledger:
        assert ledger.problem is not None
        assert message in str(ledger.problem)
        assert "operator" in str(ledger.problem)
        with pytest.raises(LedgerError, match=message):
            ledger.try_charge("a", 0.5, NOON + timedelta(days=3))
    # The files are left as found, for the operator.
    assert not path.exists() if damage == "delete" else path.exists()


def test_every_flipped_byte_of_a_charge_line_is_caught_never_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    mark = _spend(path, 0.25, 0.5, 0.25)
    good = path.read_bytes()
    lines = good.splitlines(keepends=True)
    start = len(lines[0]) + len(lines[1])  # the second charge line
    for i in range(start, start + len(lines[2]) - 1):  # every byte but its newline
        flipped = bytearray(good)
        flipped[i] ^= 0x01
        path.write_bytes(bytes(flipped))
        # Even with no evidence from the device state: a corrupt line is never skipped.
        with _reopen(path, LedgerEvidence()) as ledger:
            assert ledger.problem is not None, i
            assert "line 3 fails its integrity check" in str(ledger.problem)
            with pytest.raises(LedgerError):
                ledger.try_charge("a", 0.25, NOON)
    path.write_bytes(good)
    with _reopen(path, LedgerEvidence(sequence=2, spent=mark)) as ledger:
        assert ledger.problem is None
        assert ledger.spent_today(NOON) == 1.0


def test_a_line_forged_without_the_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    _spend(path, 1.0)
    # A line checksummed by someone who does not hold the key: a plain checksum (the
    # unkeyed ledger) is easy to recompute, the device's MAC is not.
    with PrivacyLedger(tmp_path / "other", CAPS) as unkeyed:
        unkeyed.try_charge("a", 0.001, NOON)
    forged = (tmp_path / "other").read_bytes().splitlines(keepends=True)[1]
    with path.open("ab") as fh:
        fh.write(forged)
    with _reopen(path, LedgerEvidence()) as ledger:
        assert "line 3 fails" in str(ledger.problem)


def test_a_sound_ledger_opens_whatever_the_evidence_allows(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    mark = _spend(path, 1.0)
    # A device that released envelopes without charging (windows of a batch it had
    # already reported, say): its header-only journal is sound.
    PrivacyLedger(tmp_path / "fresh", CAPS, key=KEY).close()  # created at first start
    with _reopen(tmp_path / "fresh", LedgerEvidence(sequence=4, spent=Decimal(0))) as ledger:
        assert ledger.problem is None
    (tmp_path / "fresh").write_bytes(b"")  # ...but an emptied one is not
    with _reopen(tmp_path / "fresh", LedgerEvidence(sequence=4, spent=Decimal(0))) as ledger:
        assert ledger.problem is not None
    with _reopen(path, LedgerEvidence(sequence=9, spent=mark)) as ledger:
        assert ledger.problem is None
        assert ledger.try_charge("a", 1.0, NOON)


def test_the_operator_reset_keeps_the_damage_and_charges_conservatively(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    mark = _spend(path, 3.0, 3.0)
    path.write_bytes(path.read_bytes().splitlines(keepends=True)[0])  # charges deleted
    evidence = LedgerEvidence(sequence=1, spent=mark)
    at = NOON + timedelta(hours=2)
    now = ClockReading(at.timestamp(), "boot-a", 5_000.0)
    with _reopen(path, evidence) as ledger:
        with pytest.raises(ValueError, match="say why"):
            ledger.reset(at, now=now, reason=" ")
        ledger.reset(at, now=now, reason="journal emptied by a cleanup tool; ticket 42")
        assert ledger.problem is None
        # The current day is fully spent and the lifetime is at least what was shown.
        assert ledger.spent_today(at) == 8.0
        assert ledger.spent_lifetime() >= float(mark) + 8.0
        assert not ledger.try_charge("a", 0.1, at, now=now)
        later = ClockReading(now.wall + 23 * 3600, "boot-a", now.mono + 23 * 3600)
        assert not ledger.try_charge("a", 0.1, at + timedelta(days=1), now=later)
        # A day of real time later, the next day's budget is open again.
        day = ClockReading(now.wall + 86_400, "boot-a", now.mono + 86_400)
        assert ledger.try_charge("a", 0.1, at + timedelta(days=1), now=day)
    damaged = sorted(p.name for p in tmp_path.iterdir() if ".damaged-" in p.name)
    assert damaged
    assert damaged[0].startswith("ledger.damaged-")
    # The reset ledger survives reopening against the same evidence.
    with _reopen(path, evidence) as ledger:
        assert ledger.problem is None
        assert ledger.spent_today(at) == 8.0


def test_a_policy_change_never_raises_what_a_day_may_still_spend(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    at = NOON
    with PrivacyLedger(path, _caps(8.0), key=KEY, policy_hash="default") as ledger:
        assert ledger.try_charge("a", 6.0, at)
    # Mid-day switch to a policy with 8x the cap: the day keeps the strictest cap.
    with PrivacyLedger(path, _caps(64.0), key=KEY, policy_hash="pilot") as ledger:
        assert ledger.remaining(at) == 2.0
        assert not ledger.try_charge("a", 2.5, at)
        assert ledger.try_charge("a", 2.0, at)
        assert not ledger.try_charge("a", 0.1, at)
        # The next UTC day (a day of real time later) runs under the new cap.
        tomorrow = at + timedelta(days=1)
        assert ledger.try_charge("a", 60.0, tomorrow)
    # And a stricter policy lowers what is left at once.
    with PrivacyLedger(path, _caps(61.0), key=KEY, policy_hash="strict") as ledger:
        assert ledger.remaining(at + timedelta(days=1)) == 1.0
    lines = path.read_bytes().splitlines()
    assert b'"p":"default"' in lines[1]
    assert b'"cap":"8.0"' in lines[1]
