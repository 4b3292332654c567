"""The per-device privacy ledger: every release is charged before it is sent.

Accounting is pure differential privacy with basic composition (losses add up), as the
policy states (`PrivacyCaps.accounting == "pure_dp"`). A charge is granted only if the
device's total for that UTC day and its lifetime total both stay within the caps;
otherwise the release is suppressed and the suppression counted per signal.

Durability, because an undercounting ledger is a privacy bug:

* Every charge and suppression is one line appended to a journal and fsynced before
  `try_charge` returns: `<crc32 hex> <json>\\n`. `try_charge_many` decides a window's
  charges in order and appends their lines in one write and one fsync. A crash
  mid-write leaves at most one torn last line, which fails its checksum (or lacks its
  newline) and is cut off at the next open; earlier lines are never rewritten, so
  earlier charges survive. (A torn batch keeps its complete leading lines: those
  charges stand, though their releases were never made. Charging more than was
  released is the safe direction.)
* Every `compact_every` records the state is written to a snapshot (temp file, fsync,
  atomic rename) and the journal restarted with the next generation number. A crash
  between the two steps leaves a journal one generation behind the snapshot, which is
  recognised and discarded (its charges are already in the snapshot).
* Sums are kept as exact decimals of the policy's epsilons, so 0.1 charged ten times
  reaches a cap of 1.0 exactly, neither early nor late.

One process owns a ledger file at a time (an exclusive advisory lock on `<path>.lock`).
A forked child inherits the lock but not an up-to-date view of the parent's charges, so
it is refused every charge (`LedgerError`): it would otherwise spend the same budget
twice, on data it shares with its parent.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from client._errors import ClientError
from policies import EXACT_EPSILON, PrivacyCaps, budget_day, epsilon_decimal

__all__ = ["LedgerError", "PrivacyLedger", "write_atomically"]

_EXACT = EXACT_EPSILON  # shared with the ingest's ledger (policies._budget)
# Windows opens low-level files in text mode unless told otherwise; checksums need bytes.
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0)


class LedgerError(ClientError):
    """The ledger cannot be opened, read or written; no charge is granted while it lasts."""


@dataclass
class _State:
    gen: int = 0
    lifetime: Decimal = Decimal(0)
    days: dict[str, Decimal] = field(default_factory=dict)
    by_signal: dict[str, Decimal] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)

    def apply(self, record: dict[str, Any]) -> None:
        kind = record["k"]
        if kind == "c":
            eps = Decimal(record["e"])
            day, signal = record["d"], record["s"]
            self.lifetime = _EXACT.add(self.lifetime, eps)
            self.days[day] = _EXACT.add(self.days.get(day, Decimal(0)), eps)
            self.by_signal[signal] = _EXACT.add(self.by_signal.get(signal, Decimal(0)), eps)
        elif kind == "s":
            signal = record["s"]
            self.suppressed[signal] = self.suppressed.get(signal, 0) + 1
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "k": "snapshot",
            "g": self.gen,
            "lifetime": str(self.lifetime),
            "days": {d: str(v) for d, v in self.days.items()},
            "by_signal": {s: str(v) for s, v in self.by_signal.items()},
            "suppressed": dict(self.suppressed),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _State:
        return cls(
            gen=int(data["g"]),
            lifetime=Decimal(data["lifetime"]),
            days={d: Decimal(v) for d, v in data["days"].items()},
            by_signal={s: Decimal(v) for s, v in data["by_signal"].items()},
            suppressed={s: int(n) for s, n in data["suppressed"].items()},
        )


def _frame(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _unframe(line: bytes) -> dict[str, Any] | None:
    """The record in one journal line, or None if the line is torn or corrupt."""
    crc, sep, payload = line.partition(b" ")
    if not sep or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _fsync_dir(directory: Path) -> None:
    # A rename is durable only once its directory is; Windows has no directory fsync.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class PrivacyLedger:
    """A device's privacy spend, persisted and crash-safe; see the module docstring.

    `path` is the journal file; `<path>.snapshot` and `<path>.lock` sit next to it.
    Thread-safe. Each call to `try_charge(_many)` costs one small append and one fsync.
    """

    def __init__(self, path: Path | str, caps: PrivacyCaps, *, compact_every: int = 4096) -> None:
        if caps.accounting != "pure_dp":
            raise LedgerError(f"unsupported accounting {caps.accounting!r}")
        if compact_every < 1:
            raise ValueError("compact_every must be at least 1")
        self._path = Path(path)
        self._snapshot_path = self._path.with_name(self._path.name + ".snapshot")
        self._daily_cap = Decimal(repr(caps.daily_epsilon))
        self._lifetime_cap = Decimal(repr(caps.lifetime_epsilon))
        self._compact_every = compact_every
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._broken: str | None = None
        self._pid = os.getpid()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(
                self._path.with_name(self._path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
        except OSError as exc:
            raise LedgerError(f"{self._path}: cannot open: {exc.strerror or exc}") from exc
        if not _lock(lock_fd):
            os.close(lock_fd)
            raise LedgerError(f"{self._path}: in use by another ledger (process or instance)")
        try:
            self._state, self._records = self._recover()
            self._fd = os.open(self._path, _APPEND_FLAGS)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            os.close(lock_fd)
            raise LedgerError(f"{self._path}: cannot open: {exc.strerror or exc}") from exc
        except LedgerError:
            os.close(lock_fd)
            raise
        self._lock_fd = lock_fd

    # -- queries -------------------------------------------------------------------

    def try_charge(self, signal: str, epsilon: float, at: datetime) -> bool:
        """Charge `epsilon` to `signal` at `at` if both caps allow; else count a suppression.

        Returns True if the release may go ahead (the charge is durable by then), False
        if it must be suppressed. Raises `LedgerError` if the ledger cannot be written,
        in which case nothing is charged and nothing may be released.
        """
        (granted,) = self.try_charge_many([(signal, epsilon)], at)
        return granted

    def try_charge_many(self, charges: Sequence[tuple[str, float]], at: datetime) -> list[bool]:
        """`try_charge` for each `(signal, epsilon)` in order, made durable with one fsync.

        Each charge is decided against the caps as left by the ones before it. Raises
        `LedgerError` (nothing charged, nothing may be released) if the journal cannot
        be written.
        """
        for signal, epsilon in charges:
            if not signal:
                raise ValueError("signal name is empty")
            if not (math.isfinite(epsilon) and epsilon > 0):
                raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
        day = _utc_day(at)
        if os.getpid() != self._pid:
            raise LedgerError(f"{self._path}: owned by the parent process; a fork cannot charge")
        with self._mutex:
            today, lifetime = self._state.days.get(day, Decimal(0)), self._state.lifetime
            records: list[dict[str, Any]] = []
            granted: list[bool] = []
            for signal, epsilon in charges:
                eps = epsilon_decimal(epsilon)
                t, life = _EXACT.add(today, eps), _EXACT.add(lifetime, eps)
                ok = t <= self._daily_cap and life <= self._lifetime_cap
                if ok:
                    today, lifetime = t, life
                    records.append({"k": "c", "s": signal, "e": str(eps), "d": day})
                else:
                    records.append({"k": "s", "s": signal, "d": day})
                granted.append(ok)
            self._append(records)
            return granted

    def spent_today(self, at: datetime) -> float:
        """Epsilon spent during the UTC day that contains `at`."""
        day = _utc_day(at)
        with self._mutex:
            return float(self._state.days.get(day, Decimal(0)))

    def spent_lifetime(self) -> float:
        """Epsilon spent since the ledger was created."""
        with self._mutex:
            return float(self._state.lifetime)

    def remaining(self, at: datetime) -> float:
        """The largest charge that would still be granted at `at`."""
        day = _utc_day(at)
        with self._mutex:
            today = self._daily_cap - self._state.days.get(day, Decimal(0))
            return float(max(Decimal(0), min(today, self._lifetime_cap - self._state.lifetime)))

    def spent_by_signal(self) -> dict[str, float]:
        """Lifetime epsilon spent per signal (for a privacy reviewer)."""
        with self._mutex:
            return {s: float(v) for s, v in self._state.by_signal.items()}

    def suppressed(self) -> dict[str, int]:
        """How many releases of each signal were suppressed by a cap, ever."""
        with self._mutex:
            return dict(self._state.suppressed)

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

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        """Make `records` durable (one write, one fsync), then apply them. Mutex held."""
        if not records:
            return
        if self._broken is not None or self._fd is None:
            raise LedgerError(f"{self._path}: ledger unusable ({self._broken})")
        line = b"".join(_frame(record) for record in records)
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
        nxt = _State(
            gen=self._state.gen + 1,
            lifetime=self._state.lifetime,
            days=dict(self._state.days),
            by_signal=dict(self._state.by_signal),
            suppressed=dict(self._state.suppressed),
        )
        try:
            write_atomically(self._snapshot_path, _frame(nxt.to_json()))
        except OSError:
            # The journal still holds everything; try again after the next record.
            return
        try:
            header = _frame({"k": "h", "g": nxt.gen})
            write_atomically(self._path, header)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._fd = os.open(self._path, _APPEND_FLAGS)
        except OSError as exc:
            # The snapshot moved on but the old journal would now be read as stale:
            # appending to it would lose charges at the next open, so stop charging.
            self._broken = f"compaction failed: {exc}"
            raise LedgerError(f"{self._path}: cannot restart journal: {exc}") from exc
        self._state = nxt
        self._size = len(header)
        self._records = 0

    def _recover(self) -> tuple[_State, int]:
        state = self._read_snapshot()
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is None or (not data and state.gen == 0):
            write_atomically(self._path, _frame({"k": "h", "g": state.gen}))
            return state, 0
        *lines, tail = data.split(b"\n")
        records = [r for r in (_unframe(line) for line in lines) if r is not None]
        if not records or records[0].get("k") != "h":
            raise LedgerError(f"{self._path}: journal header is unreadable; refusing to guess")
        gen = records[0].get("g")
        if gen == state.gen - 1:
            # Crash between writing a snapshot and restarting the journal: every record
            # here is already in the snapshot.
            write_atomically(self._path, _frame({"k": "h", "g": state.gen}))
            return state, 0
        if gen != state.gen:
            raise LedgerError(
                f"{self._path}: journal generation {gen} does not follow snapshot "
                f"generation {state.gen}"
            )
        for record in records[1:]:
            try:
                state.apply(record)
            except (KeyError, ValueError, ArithmeticError) as exc:
                raise LedgerError(f"{self._path}: malformed record {record!r}") from exc
        if tail:
            # A torn last record (crash mid-append): cut it off before appending again.
            with open(self._path, "r+b") as fh:
                fh.truncate(len(data) - len(tail))
                fh.flush()
                os.fsync(fh.fileno())
        return state, len(records) - 1

    def _read_snapshot(self) -> _State:
        try:
            data = self._snapshot_path.read_bytes()
        except FileNotFoundError:
            return _State()
        # Snapshots are renamed into place whole, so a bad one is real corruption.
        record = _unframe(data.rstrip(b"\n"))
        if record is None or record.get("k") != "snapshot":
            raise LedgerError(f"{self._snapshot_path}: snapshot is corrupt; refusing to guess")
        try:
            return _State.from_json(record)
        except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
            raise LedgerError(f"{self._snapshot_path}: snapshot is malformed") from exc


def _utc_day(at: datetime) -> str:
    return budget_day(at)
