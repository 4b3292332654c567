"""Building envelopes, and the per-device state that must survive restarts.

`build_envelope` is pure: data in, `EnvelopeV1` out. `DeviceState` persists the last
sequence number used, the end of the last window released and the privacy ledger's
lifetime spend at that release (evidence the ledger checks its journal against), in a
small JSON file of the state directory, so a restarted client never reuses a sequence number nor
releases a window that overlaps one it already released. Each update is read, bumped
and replaced atomically under an advisory file lock, so two processes sharing a state
directory (a forked child, say) still never hand out the same number.

Sequence numbers also keep increasing when the state directory does not survive: the
ingest admits a device's envelopes only above the last number it accepted from that
device (`sequence_not_increasing`), and a device's id outlives its state directory
when its key does (a TPM device's id is its endorsement key's: an app reinstalled, a
profile reset) or the directory comes back older than it was (a backup restored, a
virtual machine's snapshot). Counted from 0 again, every envelope of such a device
would be refused until the count passed the old one, days of data. So a number is
never below its envelope's `sent_at` in microseconds since the epoch
(`sequence_floor`): a state directory made or restored later starts above every number
handed out before, while the clock has not gone back by more than the time between;
otherwise it is the last number plus one, as ever.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from client._errors import ClientError
from client._ledger import LedgerEvidence
from schemas import (
    AppInfo,
    CounterAggregate,
    EnvelopeV1,
    HistogramAggregate,
    PrioReport,
    Tier,
    TotalAggregate,
)

__all__ = ["DeviceState", "build_envelope", "sequence_floor"]


def build_envelope(
    *,
    device_id: str,
    sequence: int,
    window_start: datetime,
    window_end: datetime,
    sent_at: datetime,
    region: str,
    policy_hash: str,
    app: AppInfo,
    aggregates: Sequence[CounterAggregate | HistogramAggregate | TotalAggregate],
    reports: Sequence[PrioReport] = (),
    consent_hash: str | None = None,
    consented_tiers: Sequence[Tier] = (),
    suppressed: Mapping[str, int] | None = None,
) -> EnvelopeV1:
    """An envelope with a fresh random id for one window's released aggregates.

    `consent_hash` and `consented_tiers` are the consent state the releases were made
    under; `suppressed` counts the releases the privacy ledger withheld, by signal.
    """
    return EnvelopeV1(
        envelope_id=uuid.uuid4(),
        device_id=device_id,
        sequence=sequence,
        sent_at=sent_at,
        window_start=window_start,
        window_end=window_end,
        region=region,
        policy_hash=policy_hash,
        app=app,
        aggregates=list(aggregates),
        reports=list(reports),
        consent_hash=consent_hash,
        consented_tiers=sorted(consented_tiers, key=lambda t: t.value),
        suppressed=dict(suppressed or {}),
    )


def sequence_floor(now: float) -> int:
    """The least sequence number handed out at Unix time `now`: microseconds since the
    epoch (0 for a clock before it). Below 2^63 until the year 294,000."""
    return max(0, int(now * 1_000_000))


class DeviceState:
    """The device's persisted sequence counter and last released window end."""

    FILE_NAME = "client_state.json"

    def __init__(self, state_dir: Path | str) -> None:
        self._dir = Path(state_dir)
        self.path = self._dir / self.FILE_NAME
        self._lock_path = self._dir / (self.FILE_NAME + ".lock")
        self._lock = threading.Lock()
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ClientError(f"cannot create state directory {self._dir}: {exc}") from exc

    def last_window_end(self) -> datetime | None:
        """End of the last window this device released, if any."""
        raw = self._read().get("last_window_end")
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None

    def reported_batch(self) -> datetime | None:
        """Start of the last batch this device sent Prio3 reports for, if any."""
        raw = self._read().get("reported_batch")
        return datetime.fromisoformat(raw) if isinstance(raw, str) else None

    def ledger_evidence(self) -> LedgerEvidence:
        """What this state says about past releases, for the privacy ledger to check
        its journal against: the last sequence number and the ledger's spend then."""
        state = self._read()
        sequence, spent = state.get("sequence"), state.get("ledger_spent")
        return LedgerEvidence(
            sequence=sequence if isinstance(sequence, int) else None,
            spent=Decimal(spent) if isinstance(spent, str) else None,
        )

    def next_sequence(
        self,
        window_end: datetime,
        reported_batch: datetime | None = None,
        *,
        ledger_spent: Decimal | None = None,
        at: datetime | None = None,
    ) -> int:
        """Hand out the next sequence number (above the last one, and never below
        `sequence_floor` of `at`: the envelope's `sent_at`, so the number tells nothing
        the envelope does not; None: the system clock) and record `window_end` as released (and
        `reported_batch`, when the envelope carries Prio3 reports of that batch, and
        `ledger_spent`, the privacy ledger's lifetime spend the envelope was made at).

        Persisted (fsync, atomic rename) before it is returned: a crash may skip a
        number, never repeat one.
        """
        with self._lock, open(self._lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                state = self._read()
                last = state.get("sequence")
                seq = sequence_floor(time.time() if at is None else at.timestamp())
                if isinstance(last, int):
                    seq = max(seq, last + 1)
                previous = state.get("last_window_end")
                end = window_end.astimezone(UTC)
                if isinstance(previous, str):
                    # Never move the release horizon backwards.
                    end = max(end, datetime.fromisoformat(previous))
                update: dict[str, object] = {
                    **state,
                    "sequence": seq,
                    "last_window_end": end.isoformat(),
                }
                if reported_batch is not None:
                    old = state.get("reported_batch")
                    batch = reported_batch.astimezone(UTC)
                    if isinstance(old, str):
                        batch = max(batch, datetime.fromisoformat(old))
                    update["reported_batch"] = batch.isoformat()
                if ledger_spent is not None:
                    old_spent = state.get("ledger_spent")
                    if isinstance(old_spent, str):
                        ledger_spent = max(ledger_spent, Decimal(old_spent))
                    update["ledger_spent"] = str(ledger_spent)
                self._write(update)
                return seq
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def reset_after_fork(self) -> None:
        """A fresh lock in a forked child: the parent's worker may have held it mid-fsync
        (the file lock, a per-process `flock`, is taken anew by each call)."""
        self._lock = threading.Lock()

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read client state {self.path}: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def _write(self, state: dict[str, object]) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ClientError(f"cannot write client state {self.path}: {exc}") from exc
