"""The privacy ledger: caps hold whatever is recorded, and charges survive crashes."""

from __future__ import annotations

import random
import shutil
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from client._ledger import LedgerError, PrivacyLedger
from policies import MechanismChoice, PrivacyCaps, load_policy
from schemas import Mechanism

NOON = datetime(2026, 11, 27, 12, tzinfo=UTC)


def _caps(daily: float, lifetime: float) -> PrivacyCaps:
    laplace = Mechanism.DISCRETE_LAPLACE
    return PrivacyCaps(
        accounting="pure_dp",
        daily_epsilon=daily,
        lifetime_epsilon=lifetime,
        mechanisms=MechanismChoice(
            counter=laplace, histogram_counts=laplace, histogram_sum=Mechanism.LAPLACE
        ),
    )


CAPS = _caps(daily=1.0, lifetime=3.0)


def test_charges_until_the_daily_cap_then_suppresses(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger", CAPS) as ledger:
        granted = [ledger.try_charge("inference.requests", 0.25, NOON) for _ in range(6)]
        assert granted == [True, True, True, True, False, False]
        assert ledger.spent_today(NOON) == 1.0
        assert ledger.spent_lifetime() == 1.0
        assert ledger.remaining(NOON) == 0.0
        assert ledger.suppressed() == {"inference.requests": 2}
        # A smaller charge does not sneak past a full cap either.
        assert not ledger.try_charge("inference.errors", 0.01, NOON)
        assert ledger.suppressed() == {"inference.requests": 2, "inference.errors": 1}


def test_decimal_epsilons_reach_the_cap_exactly(tmp_path: Path) -> None:
    # As floats, ten 0.1s sum to 0.9999999999999999 and an eleventh would slip through
    # a naive comparison against 1.0 if rounding went the other way; the ledger is exact.
    with PrivacyLedger(tmp_path / "ledger", CAPS) as ledger:
        assert all(ledger.try_charge("s", 0.1, NOON) for _ in range(10))
        assert ledger.spent_today(NOON) == 1.0
        assert not ledger.try_charge("s", 0.1, NOON)


def test_days_are_utc_days_and_lifetime_accumulates(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger", CAPS) as ledger:
        assert ledger.try_charge("s", 1.0, NOON)
        # 01:00 at UTC+2 is still the previous UTC day: the cap is already spent.
        early_local = datetime(2026, 11, 28, 1, tzinfo=timezone(timedelta(hours=2)))
        assert not ledger.try_charge("s", 0.5, early_local)
        next_day = NOON + timedelta(days=1)
        assert ledger.try_charge("s", 1.0, next_day)
        assert ledger.spent_today(next_day) == 1.0
        assert ledger.try_charge("s", 1.0, NOON + timedelta(days=2))
        # Lifetime cap of 3.0 reached: a fresh day no longer helps.
        assert not ledger.try_charge("s", 0.1, NOON + timedelta(days=3))
        assert ledger.spent_lifetime() == 3.0
        assert ledger.spent_by_signal() == {"s": 3.0}


def test_no_device_exceeds_its_caps_whatever_it_records(tmp_path: Path) -> None:
    rng = random.Random(4)
    caps = _caps(daily=2.0, lifetime=9.0)
    at = NOON
    with PrivacyLedger(tmp_path / "ledger", caps, compact_every=17) as ledger:
        for _ in range(500):
            at += timedelta(minutes=rng.randrange(0, 90))
            eps = rng.choice([0.01, 0.1, 0.125, 0.25, 0.3, 1.0, 2.0])
            ledger.try_charge(rng.choice(["a", "b", "c"]), eps, at)
            assert ledger.spent_today(at) <= 2.0
        assert ledger.spent_lifetime() <= 9.0
        assert sum(ledger.suppressed().values()) > 0


def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    with PrivacyLedger(path, CAPS) as ledger:
        for _ in range(5):
            ledger.try_charge("a", 0.25, NOON)
    with PrivacyLedger(path, CAPS) as ledger:
        assert ledger.spent_today(NOON) == 1.0
        assert ledger.suppressed() == {"a": 1}
        assert not ledger.try_charge("a", 0.25, NOON)


def test_a_torn_last_record_is_ignored_at_every_cut_point(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    with PrivacyLedger(path, CAPS) as ledger:
        ledger.try_charge("a", 0.25, NOON)
        ledger.try_charge("b", 0.5, NOON)
    before_last = path.read_bytes()
    with PrivacyLedger(path, CAPS) as ledger:
        ledger.try_charge("c", 0.125, NOON)
    full = path.read_bytes()
    last_line = full[len(before_last) :]
    assert last_line.endswith(b"\n")
    # A crash may stop the write after any byte of the last record.
    for cut in range(len(last_line)):
        case = tmp_path / f"cut{cut}"
        case.mkdir()
        (case / "ledger").write_bytes(before_last + last_line[:cut])
        with PrivacyLedger(case / "ledger", CAPS) as ledger:
            assert ledger.spent_today(NOON) == 0.75, cut
            assert ledger.spent_by_signal() == {"a": 0.25, "b": 0.5}
            # The ledger goes on charging, and the new record is not glued to the torn one.
            assert ledger.try_charge("d", 0.25, NOON)
        with PrivacyLedger(case / "ledger", CAPS) as ledger:
            assert ledger.spent_today(NOON) == 1.0, cut


def test_a_garbled_complete_line_is_refused_never_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    with PrivacyLedger(path, CAPS) as ledger:
        ledger.try_charge("a", 0.5, NOON)
    with path.open("ab") as fh:
        fh.write(b'0000dead {"k":"c","s":"a","e":"0.5"}\n\x00\x00\x00')
    with PrivacyLedger(path, CAPS) as ledger:
        assert ledger.problem is not None
        assert "line 3 fails its integrity check" in str(ledger.problem)
        with pytest.raises(LedgerError, match="operator"):
            ledger.try_charge("a", 0.1, NOON)


def test_compaction_keeps_every_charge(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    with PrivacyLedger(path, _caps(daily=10.0, lifetime=100.0), compact_every=5) as ledger:
        for i in range(23):
            ledger.try_charge(f"s{i % 2}", 0.25, NOON + timedelta(days=i % 3))
    assert path.with_name("ledger.snapshot").exists()
    assert len(path.read_bytes().splitlines()) < 6
    with PrivacyLedger(path, _caps(daily=10.0, lifetime=100.0)) as ledger:
        assert ledger.spent_lifetime() == 23 * 0.25
        assert ledger.spent_today(NOON) == 8 * 0.25
        assert ledger.spent_by_signal() == {"s0": 12 * 0.25, "s1": 11 * 0.25}


def test_crash_between_snapshot_and_journal_restart_does_not_double_count(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger"
    caps = _caps(daily=10.0, lifetime=100.0)
    with PrivacyLedger(path, caps, compact_every=3) as ledger:
        ledger.try_charge("a", 0.5, NOON)
        ledger.try_charge("a", 0.5, NOON)
        shutil.copy(path, tmp_path / "journal-before")
        ledger.try_charge("a", 0.5, NOON)  # third record: snapshot, then journal restart
    # The snapshot now holds all three charges. Put back the previous generation's
    # journal, as if the process died after the snapshot but before the restart.
    path.write_bytes((tmp_path / "journal-before").read_bytes())
    with PrivacyLedger(path, caps) as ledger:
        assert ledger.spent_lifetime() == 1.5
        assert ledger.try_charge("a", 0.5, NOON)
    with PrivacyLedger(path, caps) as ledger:
        assert ledger.spent_lifetime() == 2.0


def test_corrupt_snapshot_or_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    with PrivacyLedger(path, CAPS, compact_every=1) as ledger:
        ledger.try_charge("a", 0.5, NOON)
    snapshot = path.with_name("ledger.snapshot")
    good = snapshot.read_bytes()
    snapshot.write_bytes(good.replace(b"0.5", b"0.0"))
    with PrivacyLedger(path, CAPS) as ledger:
        assert "snapshot is corrupt" in str(ledger.problem)
        with pytest.raises(LedgerError, match="snapshot is corrupt"):
            ledger.try_charge("a", 0.1, NOON)
    snapshot.write_bytes(good)
    path.write_bytes(b"garbage\n")
    with PrivacyLedger(path, CAPS) as ledger:
        assert "line 1 fails" in str(ledger.problem)
        with pytest.raises(LedgerError):
            ledger.try_charge("a", 0.1, NOON)


def test_one_owner_per_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    with PrivacyLedger(path, CAPS), pytest.raises(LedgerError, match="in use"):
        PrivacyLedger(path, CAPS)
    with PrivacyLedger(path, CAPS) as ledger:  # released on close
        assert ledger.spent_lifetime() == 0.0


def test_closed_ledger_grants_nothing(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger", CAPS)
    ledger.close()
    with pytest.raises(LedgerError):
        ledger.try_charge("a", 0.1, NOON)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger", CAPS) as ledger:
        with pytest.raises(ValueError, match="timezone-aware"):
            ledger.try_charge("a", 0.1, datetime(2026, 11, 27, 12))
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="positive finite"):
                ledger.try_charge("a", bad, NOON)
        assert ledger.spent_lifetime() == 0.0


def test_concurrent_charges_never_overspend(tmp_path: Path) -> None:
    caps = _caps(daily=8.0, lifetime=100.0)
    with PrivacyLedger(tmp_path / "ledger", caps) as ledger:
        results: list[bool] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(25):
                ok = ledger.try_charge("a", 0.25, NOON)
                with lock:
                    results.append(ok)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(True) == 32
        assert ledger.suppressed() == {"a": 200 - 32}
        assert ledger.spent_today(NOON) == 8.0


def test_default_policy_caps_are_accepted(tmp_path: Path) -> None:
    policy = load_policy()
    with PrivacyLedger(tmp_path / "ledger", policy.privacy) as ledger:
        signal = policy.signals["inference.requests"]
        assert ledger.try_charge("inference.requests", signal.epsilon, NOON)


def test_a_windows_charges_are_decided_in_order_with_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Window close charges every signal at once: each is decided against the caps the
    # ones before it left, and the whole window costs one fsync, not one per signal.
    import client._ledger as ledger_module

    fsyncs: list[int] = []
    real_fsync = ledger_module.os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    with PrivacyLedger(tmp_path / "ledger", CAPS) as ledger:
        monkeypatch.setattr(ledger_module.os, "fsync", counting_fsync)
        granted = ledger.try_charge_many([("a", 0.5), ("b", 0.4), ("c", 0.3), ("d", 0.1)], NOON)
        monkeypatch.undo()
        assert granted == [True, True, False, True]
        assert len(fsyncs) == 1
        assert ledger.try_charge_many([], NOON) == []
    with PrivacyLedger(tmp_path / "ledger", CAPS) as reopened:
        assert reopened.spent_today(NOON) == 1.0
        assert reopened.spent_by_signal() == {"a": 0.5, "b": 0.4, "d": 0.1}
        assert reopened.suppressed() == {"c": 1}
