"""The per-device privacy ledger: every release is charged before it is made.

Accounting is pure differential privacy with basic composition (losses add up), as the
policy states (`PrivacyCaps.accounting == "pure_dp"`). A charge is granted only if all
three of these stay within their caps:

* **the UTC day** the release describes (the window's start): its cap is the
  *strictest* daily cap of every policy the device charged under that day, so a policy
  change never raises what a day may still spend (each charge records its policy's
  hash and daily cap);
* **the last 24 real hours**: charges within 24 hours of real time (measured on the
  monotonic clock of one boot, which counts through suspend, `client._clock`; across
  boots on the wall clock, which may then not run behind the latest charge) add up to
  at most the strictest daily cap among them and the current policy's. Moving the
  wall clock forward or back opens no budget: the cap holds in any 24 real hours, not
  twice the cap;
* **the lifetime** total.

Otherwise the release is suppressed and the suppression counted per signal.

Integrity, because an undercounting ledger is a privacy bug:

* Every record is one line `<mac> <json>\\n`, the MAC a keyed BLAKE2b of the JSON
  under a key the device already keeps secret (`client._privacy` derives it from the
  spool key). Records are appended and fsynced before `try_charge(_many)` returns; a
  window's records go in one write and one fsync. A crash mid-write leaves a torn last
  line without its newline, which is cut off at the next open (a torn batch keeps its
  complete leading lines: charging more than was released is the safe direction). A
  *complete* line that fails its MAC or does not parse is never skipped: the ledger
  refuses every charge (`problem`), as it does for a corrupt snapshot or header.
* It cannot be rolled back by the device's own files. `LedgerEvidence` (the device
  state's sequence number and the lifetime spend recorded with each envelope,
  `client._envelope.DeviceState`) says whether the device has released before and how
  much it had spent: a missing or empty journal for a device that has released, or a
  journal that holds less than was recorded (charge lines deleted, even with the
  header kept), refuses every charge.
* Refusal lasts until an operator acknowledges the loss with `reset` (wired as
  `Telemetry.reset_ledger`): the damaged files are kept aside, and the new ledger
  starts conservatively, with the current day and the last 24 real hours fully spent
  and at least the lifetime spend the evidence shows.
* A journal of the previous client release (CRC-32 lines) is migrated once, when it
  is entirely in that format and every line passes its CRC (`client._legacy_journal`:
  same charges, written atomically, logged); one that fails a CRC or mixes formats is
  refused like any corrupt journal.
* Every `compact_every` records the state is written to a snapshot (temp file, fsync,
  atomic rename) and the journal restarted with the next generation number. A crash
  between the two steps leaves a journal one generation behind the snapshot, which is
  recognised and discarded (its charges are already in the snapshot).
* Sums are exact decimals of the epsilons, so 0.1 charged ten times reaches a cap of
  1.0 exactly, neither early nor late.

One process owns a ledger file at a time (an exclusive advisory lock on `<path>.lock`).
A forked child inherits the lock but not an up-to-date view of the parent's charges, so
it is refused every charge (`LedgerError`): it would otherwise spend the same budget
twice, on data it shares with its parent.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from client._clock import ClockReading
from client._errors import ClientError
from client._journal import APPEND_FLAGS, LineFraming, lock_exclusively, write_atomically
from client._ledger_state import DAY_SECONDS, LedgerState, reading_of, total_of
from client._legacy_journal import is_legacy, plan_migration
from policies import EXACT_EPSILON, PrivacyCaps, budget_day, epsilon_decimal

__all__ = ["DAY_SECONDS", "LedgerError", "LedgerEvidence", "PrivacyLedger", "write_atomically"]

_EXACT = EXACT_EPSILON  # shared with the ingest's ledger (policies._budget)
_log = logging.getLogger("client")


class LedgerError(ClientError):
    """The ledger cannot be opened, read, trusted or written; no charge is granted."""


@dataclass(frozen=True, slots=True)
class LedgerEvidence:
    """What the device's other persisted state says about its past releases."""

    sequence: int | None = None
    """The last envelope sequence number handed out (None: the device never released)."""
    spent: Decimal | None = None
    """The ledger's lifetime spend recorded with the latest envelope."""


class _Untrusted(Exception):
    """The files cannot be trusted; the message says why (becomes `problem`)."""


class PrivacyLedger:
    """A device's privacy spend, persisted, crash-safe and tamper-evident; see the
    module docstring.

    `path` is the journal; `<path>.snapshot` and `<path>.lock` sit next to it. `key`
    keys the lines' MACs (None: a plain checksum). `policy_hash` names the policy the
    charges are made under. `evidence` is what the device's other state says about its
    past releases. Files that cannot be trusted do not raise here: the ledger opens
    refusing every charge (`problem`) until `reset`. Raises `LedgerError` only when the
    files cannot be opened or another ledger holds them. Thread-safe.
    """

    def __init__(
        self,
        path: Path | str,
        caps: PrivacyCaps,
        *,
        key: bytes | None = None,
        policy_hash: str = "",
        evidence: LedgerEvidence | None = None,
        compact_every: int = 4096,
    ) -> None:
        if caps.accounting != "pure_dp":
            raise LedgerError(f"unsupported accounting {caps.accounting!r}")
        if compact_every < 1:
            raise ValueError("compact_every must be at least 1")
        self._path = Path(path)
        self._snapshot_path = self._path.with_name(self._path.name + ".snapshot")
        self._framing = LineFraming(key)
        self._policy = policy_hash[:16]
        self._daily_cap = epsilon_decimal(caps.daily_epsilon)
        self._lifetime_cap = epsilon_decimal(caps.lifetime_epsilon)
        self._evidence = evidence or LedgerEvidence()
        self._compact_every = compact_every
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._broken: str | None = None
        self._problem: LedgerError | None = None
        self._pid = os.getpid()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(
                self._path.with_name(self._path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
        except OSError as exc:
            raise LedgerError(f"{self._path}: cannot open: {exc.strerror or exc}") from exc
        if not lock_exclusively(lock_fd):
            os.close(lock_fd)
            raise LedgerError(f"{self._path}: in use by another ledger (process or instance)")
        try:
            self._state, self._records = self._recover()
            self._fd = os.open(self._path, APPEND_FLAGS)
            self._size = os.fstat(self._fd).st_size
        except _Untrusted as exc:
            self._problem = LedgerError(f"{self._path}: {exc}; {_OPERATOR_ACTION}")
        except OSError as exc:
            os.close(lock_fd)
            raise LedgerError(f"{self._path}: cannot open: {exc.strerror or exc}") from exc
        self._lock_fd = lock_fd

    # -- queries -------------------------------------------------------------------

    @property
    def problem(self) -> LedgerError | None:
        """Why every charge is refused until `reset`, or None if the ledger is sound."""
        return self._problem

    @property
    def latest_wall(self) -> float:
        """The latest wall-clock time any charge was stamped with (-inf: none yet).
        Charges are pruned against their stamps, so none may be stamped before it."""
        with self._mutex:
            return self._state.max_wall

    def try_charge(
        self, signal: str, epsilon: float, at: datetime, *, now: ClockReading | None = None
    ) -> bool:
        """Charge `epsilon` to `signal` for the day of `at` if every cap allows; else
        count a suppression. See `try_charge_many`."""
        (granted,) = self.try_charge_many([(signal, epsilon)], at, now=now)
        return granted

    def try_charge_many(
        self,
        charges: Sequence[tuple[str, float]],
        at: datetime,
        *,
        now: ClockReading | None = None,
    ) -> list[bool]:
        """`try_charge` for each `(signal, epsilon)` in order, made durable with one fsync.

        `at` is the time the releases describe (the window's start: its UTC day is
        charged); `now` is the real time of the charge (without it, `at` stands for it:
        a simulator's clock). Each charge is decided against the caps as left by the
        ones before it. True: the release may go ahead (the charge is durable). Raises
        `LedgerError` (nothing charged, nothing may be released) if the ledger refuses
        (`problem`) or cannot be written.
        """
        for signal, epsilon in charges:
            if not signal:
                raise ValueError("signal name is empty")
            if not (math.isfinite(epsilon) and epsilon > 0):
                raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
        day = budget_day(at)
        now = now if now is not None else reading_of(at)
        if os.getpid() != self._pid:
            raise LedgerError(f"{self._path}: owned by the parent process; a fork cannot charge")
        if self._problem is not None:
            raise self._problem
        with self._mutex:
            state = self._state
            today, lifetime = state.days.get(day, Decimal(0)), state.lifetime
            day_cap = min(self._daily_cap, state.day_caps.get(day, self._daily_cap))
            recent = [s for s in state.recent if not state.is_old(s, now)]
            window = total_of(recent)
            window_cap = min([self._daily_cap, *(s.cap for s in recent)])
            records: list[dict[str, Any]] = []
            granted: list[bool] = []
            for signal, epsilon in charges:
                eps = epsilon_decimal(epsilon)
                t, w, life = (_EXACT.add(x, eps) for x in (today, window, lifetime))
                ok = t <= day_cap and w <= window_cap and life <= self._lifetime_cap
                if ok:
                    today, window, lifetime = t, w, life
                    records.append(self._charge_record(signal, eps, day, now))
                else:
                    records.append({"k": "s", "s": signal, "d": day})
                granted.append(ok)
            state.prune(now)
            self._append(records)
            return granted

    def seconds_until_room(self, epsilon: float, now: ClockReading) -> float | None:
        """How long until the last 24 real hours have room for `epsilon` (0: now);
        None if they never will on their own (a cap below it, or a wall clock behind)."""
        eps = epsilon_decimal(epsilon)
        with self._mutex:
            state = self._state
            recent = sorted(
                ((state.expires_in(s, now), s) for s in state.recent if not state.is_old(s, now)),
                key=lambda pair: pair[0],
            )
            for i in range(len(recent) + 1):
                left = recent[i:]
                spent = total_of(s for _, s in left)
                cap = min([self._daily_cap, *(s.cap for _, s in left)])
                if _EXACT.add(spent, eps) <= cap:
                    wait = recent[i - 1][0] if i else 0.0
                    return wait if math.isfinite(wait) else None
            return None

    def spent_today(self, at: datetime) -> float:
        """Epsilon spent on the UTC day that contains `at`."""
        day = budget_day(at)
        with self._mutex:
            return float(self._state.days.get(day, Decimal(0)))

    def spent_lifetime(self) -> float:
        """Epsilon spent since the ledger was created."""
        with self._mutex:
            return float(self._state.lifetime)

    def lifetime_mark(self) -> Decimal:
        """The exact lifetime spend: the evidence the device state keeps with each envelope."""
        with self._mutex:
            return self._state.lifetime

    def remaining(self, at: datetime, *, now: ClockReading | None = None) -> float:
        """The largest charge that would still be granted for the day of `at`, `now`."""
        day = budget_day(at)
        now = now if now is not None else reading_of(at)
        with self._mutex:
            state = self._state
            day_cap = min(self._daily_cap, state.day_caps.get(day, self._daily_cap))
            recent = [s for s in state.recent if not state.is_old(s, now)]
            window_cap = min([self._daily_cap, *(s.cap for s in recent)])
            left = min(
                day_cap - state.days.get(day, Decimal(0)),
                window_cap - total_of(recent),
                self._lifetime_cap - state.lifetime,
            )
            return float(max(Decimal(0), left))

    def spent_by_signal(self) -> dict[str, float]:
        """Lifetime epsilon spent per signal (for a privacy reviewer)."""
        with self._mutex:
            return {s: float(v) for s, v in self._state.by_signal.items()}

    def suppressed(self) -> dict[str, int]:
        """How many releases of each signal were suppressed by a cap, ever."""
        with self._mutex:
            return dict(self._state.suppressed)

    # -- operator action -------------------------------------------------------------

    def reset(self, at: datetime, *, now: ClockReading | None = None, reason: str) -> None:
        """Acknowledge a lost or damaged ledger and start again, conservatively.

        The damaged journal and snapshot are renamed aside (`.damaged-<time>`), never
        deleted. The new ledger keeps whatever could be read, takes at least the
        lifetime spend the evidence shows, and charges the whole daily cap to the day of
        `at` and to `now` (without it, `at`): nothing is released for that day, nor for
        24 real hours. `reason` is recorded. Raises `LedgerError` if it cannot write.
        """
        if not reason.strip():
            raise ValueError("say why the ledger is reset (it is recorded)")
        now = now if now is not None else reading_of(at)
        with self._mutex:
            if self._lock_fd is None:
                raise LedgerError(f"{self._path}: ledger is closed")
            floor = max(self._state.lifetime, self._evidence.spent or Decimal(0))
            cap = min(self._daily_cap, self._state.day_caps.get(budget_day(at), self._daily_cap))
            fresh = self._state.copy(gen=self._state.gen + 1)
            fresh.apply(
                {
                    "k": "r",
                    "e": str(cap),
                    "cap": str(cap),
                    "floor": str(floor),
                    "d": budget_day(at),
                    "why": reason[:200],
                    "w": now.wall,
                    "b": now.boot,
                    "m": now.mono,
                }
            )
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            try:
                for damaged in (self._path, self._snapshot_path):
                    if damaged.exists():
                        os.replace(damaged, damaged.with_name(f"{damaged.name}.damaged-{stamp}"))
                write_atomically(self._snapshot_path, self._framing.frame(fresh.to_json()))
                write_atomically(self._path, self._framing.frame({"k": "h", "g": fresh.gen}))
                self._fd = os.open(self._path, APPEND_FLAGS)
                self._size = os.fstat(self._fd).st_size
            except OSError as exc:
                self._broken = f"reset failed: {exc}"
                raise LedgerError(f"{self._path}: cannot reset: {exc}") from exc
            self._state, self._records = fresh, 0
            self._problem = None
            self._broken = None

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Release the files; later charges raise `LedgerError`."""
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the lock
                self._lock_fd = None
            self._broken = "closed"

    def reset_after_fork(self) -> None:
        """A fresh mutex in a forked child (a parent thread may have held it mid-fsync).

        The child still may not charge (see the module docstring); it may read.
        """
        self._mutex = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- storage -------------------------------------------------------------------

    def _charge_record(
        self, signal: str, eps: Decimal, day: str, now: ClockReading
    ) -> dict[str, Any]:
        return {
            "k": "c",
            "s": signal,
            "e": str(eps),
            "d": day,
            "p": self._policy,
            "cap": str(self._daily_cap),
            "w": now.wall,
            "b": now.boot,
            "m": now.mono,
        }

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        """Make `records` durable (one write, one fsync), then apply them. Mutex held."""
        if not records:
            return
        if self._broken is not None or self._fd is None:
            raise LedgerError(f"{self._path}: ledger unusable ({self._broken})")
        line = b"".join(self._framing.frame(record) for record in records)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            # Cut a partial line off so the next append does not glue onto it.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._broken = f"write failed and could not be undone: {exc}"
            raise LedgerError(f"{self._path}: cannot write: {exc.strerror or exc}") from exc
        self._size += len(line)
        for record in records:
            self._state.apply(record)
        self._records += len(records)
        if self._records >= self._compact_every:
            self._compact()

    def _compact(self) -> None:
        nxt = self._state.copy(gen=self._state.gen + 1)
        try:
            write_atomically(self._snapshot_path, self._framing.frame(nxt.to_json()))
        except OSError:
            # The journal still holds everything; try again after the next record.
            return
        try:
            header = self._framing.frame({"k": "h", "g": nxt.gen})
            write_atomically(self._path, header)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._fd = os.open(self._path, APPEND_FLAGS)
        except OSError as exc:
            # The snapshot moved on but the old journal would now be read as stale:
            # appending to it would lose charges at the next open, so stop charging.
            self._broken = f"compaction failed: {exc}"
            raise LedgerError(f"{self._path}: cannot restart journal: {exc}") from exc
        self._state = nxt
        self._size = len(header)
        self._records = 0

    def _recover(self) -> tuple[LedgerState, int]:
        """The state the files hold; `_Untrusted` if they cannot be trusted (files are
        then left exactly as found, for the operator)."""
        self._state, self._records = LedgerState(), 0  # what queries show if refused early
        self._migrate_legacy()
        state = self._read_snapshot()
        self._state = state
        try:
            data: bytes | None = self._path.read_bytes()
        except FileNotFoundError:
            data = None
        evidence = self._evidence
        if not data:
            if state.gen > 0:
                raise _Untrusted("the journal is missing or empty, but a snapshot exists")
            if evidence.sequence is not None:
                raise _Untrusted(
                    "the journal is missing or empty, but this device has released "
                    f"envelopes (sequence {evidence.sequence})"
                )
            write_atomically(self._path, self._framing.frame({"k": "h", "g": state.gen}))
            return state, 0
        *lines, tail = data.split(b"\n")
        records = []
        for number, line in enumerate(lines, start=1):
            record = self._framing.unframe(line)
            if record is None:
                raise _Untrusted(f"line {number} fails its integrity check (corrupt or edited)")
            records.append(record)
        if not records or records[0].get("k") != "h":
            raise _Untrusted("the journal header is unreadable")
        gen = records[0].get("g")
        if gen == state.gen - 1:
            # Crash between writing a snapshot and restarting the journal: every record
            # here is already in the snapshot.
            write_atomically(self._path, self._framing.frame({"k": "h", "g": state.gen}))
            self._check_evidence(state)
            return state, 0
        if gen != state.gen:
            raise _Untrusted(
                f"journal generation {gen} does not follow snapshot generation {state.gen}"
            )
        for number, record in enumerate(records[1:], start=2):
            try:
                state.apply(record)
            except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
                raise _Untrusted(f"line {number} is malformed") from exc
        self._check_evidence(state)
        if tail:
            # A torn last record (crash mid-append): cut it off before appending again.
            with open(self._path, "r+b") as fh:
                fh.truncate(len(data) - len(tail))
                fh.flush()
                os.fsync(fh.fileno())
        return state, len(records) - 1

    def _migrate_legacy(self) -> None:
        """Convert the previous release's journal (CRC-32 lines) once; `_Untrusted` if
        it is in that format but not one clean old-format ledger. Other files are left
        to the checks that follow."""
        try:
            journal = self._path.read_bytes()
        except FileNotFoundError:
            return
        if not is_legacy(journal):
            return
        try:
            snapshot: bytes | None = self._snapshot_path.read_bytes()
        except FileNotFoundError:
            snapshot = None
        plan = plan_migration(
            journal,
            snapshot,
            self._framing,
            cap=self._daily_cap,
            policy=self._policy,
            # The ledger has no clock of its own; a migrated charge is stamped no later
            # than now (see client._legacy_journal).
            now_wall=time.time(),
        )
        if plan is None:
            raise _Untrusted(
                "the journal is in the previous release's format (CRC-32) but cannot be "
                "migrated: a line fails its checksum, the formats are mixed, or its "
                "generation does not follow the snapshot's"
            )
        if plan.snapshot is not None:
            write_atomically(self._snapshot_path, plan.snapshot)
        write_atomically(self._path, plan.journal)
        _log.warning(
            "privacy ledger %s migrated from the previous release's format (CRC-32 lines): "
            "%d charges carried over",
            self._path,
            plan.charges,
        )

    def _check_evidence(self, state: LedgerState) -> None:
        spent = self._evidence.spent
        if spent is not None and state.lifetime < spent:
            raise _Untrusted(
                f"the ledger holds {state.lifetime} epsilon spent, but the device recorded "
                f"{spent} with its envelopes (charges were removed)"
            )

    def _read_snapshot(self) -> LedgerState:
        try:
            data = self._snapshot_path.read_bytes()
        except FileNotFoundError:
            return LedgerState()
        # Snapshots are renamed into place whole, so a bad one is real corruption.
        record = self._framing.unframe(data.rstrip(b"\n"))
        if record is None or record.get("k") != "snapshot":
            raise _Untrusted("the snapshot is corrupt")
        try:
            return LedgerState.from_json(record)
        except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
            raise _Untrusted("the snapshot is malformed") from exc


_OPERATOR_ACTION = (
    "no release is made until an operator acknowledges the loss "
    "(Telemetry.reset_ledger, which treats the current day as fully spent)"
)
