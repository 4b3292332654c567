"""The ingest's durable per-device ledger: admission state and daily epsilon spend.

One SQLite file (`state_dir/ledger.sqlite3`, stdlib `sqlite3`, WAL,
``synchronous=FULL``), two tables:

- `device_marks`, one row per device: its last accepted sequence number, the end of its
  last window, the end of the policy window of its last Prio3 reports, and the retry
  keys (`ingest._admission.retry_key`) of its last request (so a retry is recognised);
- `device_spend`, one row per ingest day and device: epsilon spent and the strictest
  daily cap of the policies it used that day. Only today's and yesterday's rows are
  kept: the day is the ingest's own, so older ones can never be charged again.

`DeviceLedger.admit` applies `ingest._admission.decide` to each verified envelope and
records the outcome in the same transaction (``BEGIN IMMEDIATE``: check and charge are
one step, also against another process sharing the file). Admission runs after every
other check, so nothing refused for another reason is ever charged; the charge is
durable before the envelope is published, so an envelope stored is never uncharged. A
publish that fails (503) leaves its charge: the device resends the same envelopes,
which are recognised as already admitted and published again without a second charge.

Group commit: requests that arrive while a transaction is in flight are decided
together in the next one, in arrival order (one fsync for all of them); the blocking
SQLite work runs in a worker thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from ingest._admission import (
    Admitted,
    Candidate,
    DaySpend,
    Decision,
    DeviceMark,
    Refused,
    Repeated,
    decide,
)
from ingest._errors import ConfigurationError, LedgerUnavailable
from ingest._group_commit import GroupCommit
from ingest._pricing import EnvelopePricing
from ingest._sqlite import immediate, open_durable
from ingest._windows import AlignedWindow
from policies import Policy, budget_day
from schemas import IngestedEnvelope

__all__ = ["Admitted", "Decision", "DeviceLedger", "Refused", "Repeated"]

log = logging.getLogger("quietwire.ingest.ledger")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_marks (
    device_id           TEXT PRIMARY KEY,
    sequence            INTEGER NOT NULL,
    window_end_us       INTEGER NOT NULL,
    report_batch_end_us INTEGER,
    recent              BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_spend (
    day       TEXT NOT NULL,
    device_id TEXT NOT NULL,
    spent     TEXT NOT NULL,
    cap       TEXT,
    PRIMARY KEY (day, device_id)
) WITHOUT ROWID;
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _to_us(t: datetime) -> int:
    return (t - _EPOCH) // _US


def _from_us(us: int) -> datetime:
    return _EPOCH + us * _US


_CHUNK = 500
"""Devices per lookup: one query for a whole group commit (SQLite allows 32,766
parameters; a query per device cost a statement each)."""


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def _placeholders(chunk: Sequence[str]) -> str:
    return ", ".join("?" * len(chunk))


@dataclass(frozen=True, slots=True)
class _Request:
    candidates: list[Candidate]
    day: str


class DeviceLedger:
    """Admission state and epsilon spend per device; see the module docstring."""

    FILE_NAME = "ledger.sqlite3"

    def __init__(self, path: Path | str, policies: Iterable[Policy]) -> None:
        served = list(policies)
        self._pricing = EnvelopePricing(served)
        self._windows = {p.content_hash: timedelta(seconds=p.window_seconds) for p in served}
        self._lock = threading.Lock()
        self._pruned_before: str | None = None
        self._group: GroupCommit[list[_Request], list[list[Decision]]] = GroupCommit(
            self._admit_groups, error=_ledger_error
        )
        path = Path(path)
        try:
            self._db = open_durable(path, _SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigurationError(f"device ledger {path}: {exc}") from exc

    def close(self) -> None:
        """Close the file (after the last request)."""
        with self._lock:
            self._db.close()

    # -- the async door ------------------------------------------------------------

    async def admit(
        self, items: Sequence[IngestedEnvelope], received_at: datetime
    ) -> list[Decision]:
        """One decision per item, in order, durable when this returns.

        Raises `LedgerUnavailable` (nothing admitted, nothing charged) if the ledger
        cannot be written.
        """
        return (await self.admit_requests([(items, received_at)]))[0]

    async def admit_requests(
        self, requests: Sequence[tuple[Sequence[IngestedEnvelope], datetime]]
    ) -> list[list[Decision]]:
        """`admit` for several requests (items, receipt time) in one call: decided in
        order, in one transaction with whatever else is waiting. Raises
        `LedgerUnavailable` for all of them if the ledger cannot be written."""
        batch = [
            _Request([self._candidate(i) for i in items], budget_day(received_at))
            for items, received_at in requests
        ]
        if not any(r.candidates for r in batch):
            return [[] for _ in batch]
        return await self._group.submit(batch)

    def _admit_groups(self, groups: list[list[_Request]]) -> list[list[list[Decision]]]:
        """`_admit_all` for every waiting caller's requests at once, split back per caller."""
        outcomes = self._admit_all([r for group in groups for r in group])
        out: list[list[list[Decision]]] = []
        at = 0
        for group in groups:
            out.append(outcomes[at : at + len(group)])
            at += len(group)
        return out

    def _candidate(self, item: IngestedEnvelope) -> Candidate:
        env = item.envelope
        batch = None
        if item.batch_start is not None:
            length = self._windows[env.policy_hash]  # reports pass only under served policies
            batch = AlignedWindow(item.batch_start, item.batch_start + length)
        return Candidate(env, self._pricing.price(env), batch)

    # -- one transaction -----------------------------------------------------------

    def _admit_all(self, requests: Sequence[_Request]) -> list[list[Decision]]:
        """Decide and record `requests` in one transaction, in order (blocking)."""
        devices = sorted({c.envelope.device_id for r in requests for c in r.candidates})
        keys = sorted({(r.day, c.envelope.device_id) for r in requests for c in r.candidates})
        with self._lock:
            try:
                # A failed COMMIT (a full disk) is the error reported, not its rollback's.
                with immediate(self._db):
                    marks = self._marks(devices)
                    spends = self._spends(keys)
                    outcomes = [_decide_request(r, marks, spends) for r in requests]
                    self._store(marks, spends, requests, outcomes)
                    self._prune(min(r.day for r in requests))
            except sqlite3.Error as exc:
                log.exception("device ledger write failed")
                raise LedgerUnavailable(f"the device ledger did not commit: {exc}") from exc
        return outcomes

    def _marks(self, devices: Sequence[str]) -> dict[str, DeviceMark]:
        out: dict[str, DeviceMark] = {}
        for chunk in _chunks(devices):
            rows = self._db.execute(
                "SELECT device_id, sequence, window_end_us, report_batch_end_us, recent "
                f"FROM device_marks WHERE device_id IN ({_placeholders(chunk)})",
                chunk,
            ).fetchall()
            for device_id, seq, end_us, batch_us, recent in rows:
                ids = frozenset(recent[i : i + 16] for i in range(0, len(recent), 16))
                batch_end = None if batch_us is None else _from_us(batch_us)
                out[device_id] = DeviceMark(seq, _from_us(end_us), batch_end, ids)
        return out

    def _spends(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DaySpend]:
        out: dict[tuple[str, str], DaySpend] = {}
        by_day: dict[str, list[str]] = {}
        for day, device_id in keys:
            by_day.setdefault(day, []).append(device_id)
        for day, devices in by_day.items():
            for chunk in _chunks(devices):
                rows = self._db.execute(
                    "SELECT device_id, spent, cap FROM device_spend "
                    f"WHERE day = ? AND device_id IN ({_placeholders(chunk)})",
                    [day, *chunk],
                ).fetchall()
                for device_id, spent, cap in rows:
                    out[(day, device_id)] = DaySpend(
                        Decimal(spent), None if cap is None else Decimal(cap)
                    )
        return out

    def _store(
        self,
        marks: dict[str, DeviceMark],
        spends: dict[tuple[str, str], DaySpend],
        requests: Sequence[_Request],
        outcomes: Sequence[Sequence[Decision]],
    ) -> None:
        changed = {
            c.envelope.device_id
            for r, decisions in zip(requests, outcomes, strict=True)
            for c, d in zip(r.candidates, decisions, strict=True)
            if not isinstance(d, Refused)
        }
        self._db.executemany(
            "INSERT OR REPLACE INTO device_marks VALUES (?, ?, ?, ?, ?)",
            [
                (
                    d,
                    m.sequence,
                    _to_us(m.window_end),
                    None if m.report_batch_end is None else _to_us(m.report_batch_end),
                    b"".join(sorted(m.recent)),
                )
                for d in sorted(changed)
                if (m := marks.get(d)) is not None
            ],
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO device_spend VALUES (?, ?, ?, ?)",
            [
                (day, d, str(s.spent), None if s.cap is None else str(s.cap))
                for (day, d), s in sorted(spends.items())
                if d in changed
            ],
        )

    def _prune(self, today: str) -> None:
        """Forget days before yesterday, once per day (the ingest's day only moves on)."""
        if self._pruned_before == today:
            return
        yesterday = (datetime.fromisoformat(today) - timedelta(days=1)).date().isoformat()
        self._db.execute("DELETE FROM device_spend WHERE day < ?", (yesterday,))
        self._pruned_before = today

    # -- reading (operators, tests) ------------------------------------------------

    def spent(self, device_id: str, day: str) -> Decimal:
        """Epsilon charged to `device_id` on ingest day `day` (ISO date)."""
        with self._lock:
            row = self._db.execute(
                "SELECT spent FROM device_spend WHERE day = ? AND device_id = ?",
                (day, device_id),
            ).fetchone()
        return Decimal(0) if row is None else Decimal(row[0])


def _ledger_error(exc: Exception) -> BaseException:
    # A fresh exception per waiter (one raised in several tasks collects their tracebacks).
    return LedgerUnavailable(exc.detail) if isinstance(exc, LedgerUnavailable) else exc


def _decide_request(
    request: _Request,
    marks: dict[str, DeviceMark],
    spends: dict[tuple[str, str], DaySpend],
) -> list[Decision]:
    """Decide one request's candidates in order, updating `marks` and `spends`."""
    touched: dict[str, set[bytes]] = {}
    before: dict[str, frozenset[bytes]] = {}  # each device's last request's retry keys
    decisions: list[Decision] = []
    for candidate in request.candidates:
        env = candidate.envelope
        device_id, key = env.device_id, (request.day, env.device_id)
        mark = marks.get(device_id)
        if device_id not in before:
            before[device_id] = mark.recent if mark is not None else frozenset()
        this_request = touched.setdefault(device_id, set())
        recent = before[device_id] | this_request
        decision = decide(mark, spends.get(key, DaySpend()), candidate, recent=recent)
        if isinstance(decision, Admitted):
            marks[device_id] = decision.mark
            spends[key] = decision.spend
        if not isinstance(decision, Refused):
            this_request.add(candidate.key)
        decisions.append(decision)
    for device_id, ids in touched.items():
        if ids:
            # What a retry of this request would send again. (Built directly:
            # `dataclasses.replace` costs several times a constructor call.)
            m = marks[device_id]
            marks[device_id] = DeviceMark(
                m.sequence, m.window_end, m.report_batch_end, frozenset(ids)
            )
    return decisions
