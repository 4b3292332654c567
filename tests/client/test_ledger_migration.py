"""A journal of the previous client release (CRC-32 lines, no MAC) is migrated once,
atomically, with the same charges; one that fails a CRC or mixes formats stays refused;
a crash mid-migration leaves the old or the new file, and the next open finishes."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import client._ledger as ledger_module
from client._clock import ClockReading
from client._journal import LineFraming, write_atomically
from client._ledger import LedgerEvidence, PrivacyLedger
from client._legacy_journal import LEGACY_BOOT, is_legacy, plan_migration
from policies import MechanismChoice, PrivacyCaps
from schemas import Mechanism

NOON = datetime(2026, 11, 27, 12, tzinfo=UTC)
DAY = NOON.date().isoformat()
END_OF_DAY = (NOON.replace(hour=0) + timedelta(days=1)).timestamp()
KEY = b"k" * 32
CAPS = PrivacyCaps(
    accounting="pure_dp",
    daily_epsilon=8.0,
    lifetime_epsilon=1000.0,
    mechanisms=MechanismChoice(
        counter=Mechanism.DISCRETE_LAPLACE,
        histogram_counts=Mechanism.DISCRETE_LAPLACE,
        histogram_sum=Mechanism.LAPLACE,
    ),
)
# What the previous release wrote: two charges yesterday, three today, a suppression.
YESTERDAY = (NOON - timedelta(days=1)).date().isoformat()
CHARGES = [("a", "0.5", YESTERDAY), ("b", "1.5", YESTERDAY)] + [("a", "2.0", DAY)] * 3
SPENT_TODAY = Decimal("6.0")
SPENT = Decimal("8.0")
EVIDENCE = LedgerEvidence(sequence=12, spent=SPENT)


def _old_line(record: dict[str, Any]) -> bytes:
    """A line as the previous release framed it (`git log -p -- client/_ledger.py`)."""
    payload = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _old_journal(gen: int = 0) -> bytes:
    lines = [_old_line({"k": "h", "g": gen})]
    lines += [_old_line({"k": "c", "s": s, "e": e, "d": d}) for s, e, d in CHARGES]
    lines.append(_old_line({"k": "s", "s": "a", "d": DAY}))
    return b"".join(lines)


def _old_snapshot(gen: int, lifetime: str, days: dict[str, str]) -> bytes:
    return _old_line(
        {
            "k": "snapshot",
            "g": gen,
            "lifetime": lifetime,
            "days": days,
            "by_signal": {"a": lifetime},
            "suppressed": {"a": 2},
        }
    )


def _open(path: Path) -> PrivacyLedger:
    return PrivacyLedger(path, CAPS, key=KEY, policy_hash="f" * 64, evidence=EVIDENCE)


def _assert_migrated(path: Path, lifetime: Decimal = SPENT) -> None:
    with _open(path) as ledger:
        assert ledger.problem is None
        assert Decimal(repr(ledger.spent_lifetime())) == lifetime
        assert Decimal(repr(ledger.spent_today(NOON))) == SPENT_TODAY
        # An hour after the day ended (a later boot, by the wall clock), the charges
        # migrated as the day's own count in the last 24 real hours, yesterday's not:
        # 2.0 fits in 8, 0.5 more does not.
        later = ClockReading(END_OF_DAY + 3600.0, "boot-later", 5.0)
        assert ledger.try_charge("a", 2.0, NOON, now=later)
        assert not ledger.try_charge("b", 0.5, NOON, now=later)
    assert not is_legacy(path.read_bytes())


def test_an_old_journal_is_migrated_once_with_the_same_charges(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "privacy_ledger.journal"
    path.write_bytes(_old_journal())
    with caplog.at_level(logging.WARNING, logger="client"):
        with _open(path) as ledger:
            assert ledger.problem is None
            assert Decimal(repr(ledger.spent_lifetime())) == SPENT
            assert Decimal(repr(ledger.spent_today(NOON))) == SPENT_TODAY
            assert ledger.spent_by_signal() == {"a": 6.5, "b": 1.5}
            assert ledger.suppressed() == {"a": 1}
        migrated = path.read_bytes()
        _assert_migrated(path)  # reopened: already in the new format, nothing to do
    assert [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()] == [
        f"privacy ledger {path} migrated from the previous release's format (CRC-32 "
        "lines): 5 charges carried over"
    ]
    # Every line now carries a keyed MAC, which the old key-less checksum never did.
    framing = LineFraming(KEY)
    assert all(framing.unframe(line) is not None for line in migrated.splitlines())


def test_a_migrated_charge_gets_the_current_cap_and_the_latest_time_it_could_have_had() -> None:
    framing = LineFraming(KEY)
    plan = plan_migration(
        _old_journal(), None, framing, cap=Decimal(4), policy="p", now_wall=NOON.timestamp()
    )
    assert plan is not None
    assert plan.snapshot is None
    records = [framing.unframe(line) for line in plan.journal.splitlines()]
    charges = [r for r in records if r is not None and r["k"] == "c"]
    assert [(c["s"], c["e"], c["d"]) for c in charges] == CHARGES
    assert {c["cap"] for c in charges} == {"4"}
    # Yesterday's at the end of yesterday; today's no later than the migration.
    assert [c["w"] for c in charges] == [END_OF_DAY - 86_400.0] * 2 + [NOON.timestamp()] * 3
    assert {c["b"] for c in charges} == {LEGACY_BOOT}
    assert plan.charges == 5


@pytest.mark.parametrize(
    "damage",
    ["flipped byte", "bad crc", "mixed formats", "torn header", "orphan generation"],
)
def test_an_old_journal_that_is_not_clean_stays_refused_untouched(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "privacy_ledger.journal"
    lines = _old_journal().splitlines(keepends=True)
    if damage == "flipped byte":
        lines[2] = lines[2].replace(b'"e":"1.5"', b'"e":"0.5"')
    elif damage == "bad crc":
        lines[3] = b"00000000" + lines[3][8:]
    elif damage == "mixed formats":
        lines.append(LineFraming(KEY).frame({"k": "c", "s": "a", "e": "1", "d": DAY}))
    elif damage == "torn header":
        lines[0] = lines[0][:-5] + b"\n"
    else:  # a generation whose snapshot is gone: its charges would be lost
        lines = _old_journal(gen=3).splitlines(keepends=True)
    before = b"".join(lines)
    path.write_bytes(before)
    with _open(path) as ledger:
        assert ledger.problem is not None
        assert "previous release's format" in str(ledger.problem)
        with pytest.raises(ledger_module.LedgerError):
            ledger.try_charge("a", 0.1, NOON)
    assert path.read_bytes() == before


def test_an_old_ledger_with_a_snapshot_is_folded_into_a_new_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "privacy_ledger.journal"
    snapshot = path.with_name(path.name + ".snapshot")
    # Generation 2: 10 spent before, on an older day; the journal adds CHARGES.
    snapshot.write_bytes(_old_snapshot(2, "10.0", {"2026-11-01": "10.0"}))
    path.write_bytes(_old_journal(gen=2))
    _assert_migrated(path, lifetime=SPENT + 10)
    assert not is_legacy(snapshot.read_bytes())


Crash = Callable[[Path, bytes], None]


def _crash_before_rename(path: Path, data: bytes) -> None:
    path.with_name(path.name + ".tmp").write_bytes(data[: len(data) // 2])
    raise OSError("power lost")


def _crash_after_rename(path: Path, data: bytes) -> None:
    write_atomically(path, data)
    raise OSError("power lost")


@pytest.mark.parametrize("crash", [_crash_before_rename, _crash_after_rename])
def test_a_crash_mid_migration_leaves_the_old_or_the_new_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: Crash
) -> None:
    path = tmp_path / "privacy_ledger.journal"
    old = _old_journal()
    path.write_bytes(old)
    monkeypatch.setattr(ledger_module, "write_atomically", crash)
    with pytest.raises(ledger_module.LedgerError, match="cannot open"):
        _open(path)
    after = path.read_bytes()
    if crash is _crash_before_rename:
        assert after == old
    else:
        assert not is_legacy(after)
    monkeypatch.setattr(ledger_module, "write_atomically", write_atomically)
    _assert_migrated(path)


def test_a_crash_between_the_new_snapshot_and_the_journal_is_finished_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "privacy_ledger.journal"
    snapshot = path.with_name(path.name + ".snapshot")
    snapshot.write_bytes(_old_snapshot(2, "10.0", {"2026-11-01": "10.0"}))
    path.write_bytes(_old_journal(gen=2))
    writes: list[Path] = []

    def crash_at_the_journal(target: Path, data: bytes) -> None:
        writes.append(target)
        if target == path:
            raise OSError("power lost")
        write_atomically(target, data)

    monkeypatch.setattr(ledger_module, "write_atomically", crash_at_the_journal)
    with pytest.raises(ledger_module.LedgerError, match="cannot open"):
        _open(path)
    assert writes == [snapshot, path]
    assert is_legacy(path.read_bytes())
    assert not is_legacy(snapshot.read_bytes())
    monkeypatch.setattr(ledger_module, "write_atomically", write_atomically)
    _assert_migrated(path, lifetime=SPENT + 10)
