"""Bounded audit entries for unauthenticated requests: the first of a kind is written,
the repeats are counted and written once per interval.

Anyone can call the enrollment and attestation endpoints, from as many addresses as
they hold. One audit entry (and one fsync) per request would let them grow the log, and
stall its writer, at the rate they can send. So each decision there is keyed by
(source, action, decision, reason, device): the first of a key in an interval is
appended as usual; later ones in the same interval are only counted, and when the
interval closes one summary entry per key says how many there were, from when to when.
The table holds at most `max_keys` keys per interval; past that, decisions are counted
under the key with source ``*`` and no device (bounded by the finite sets of actions
and reasons). So per interval the log gains at most about 2 x `max_keys` entries plus
one per (action, reason), whatever the request rate, and still says what was refused,
from where and how often.

    SamplingTable     pure: observe(key, now) -> write it?; close(now) -> summaries
    SampledAudit      the I/O: appends to the `AuditLog` (thread-safe)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from auditlog import AuditDecision, AuditLog, AuditRecord

__all__ = ["OVERFLOW_SOURCE", "SampleKey", "SampledAudit", "SamplingTable", "Summary"]

OVERFLOW_SOURCE: Final = "*"
"""The source of decisions counted after the table filled up in an interval."""


@dataclass(frozen=True, slots=True)
class SampleKey:
    """What makes two decisions 'the same kind' for sampling."""

    source: str
    action: str
    decision: AuditDecision
    reason: str | None
    device_id: str | None


@dataclass(frozen=True, slots=True)
class Summary:
    """The repeats of one key in one interval, not written one by one."""

    key: SampleKey
    count: int
    first_at: float
    last_at: float

    def record(self) -> AuditRecord:
        """The summary as an audit entry: the key's action, decision and reason, and the
        count, source and time span as JSON in the detail."""
        detail = json.dumps(
            {
                "repeated": self.count,
                "source": self.key.source,
                "first_at": self.first_at,
                "last_at": self.last_at,
            },
            sort_keys=True,
        )
        key = self.key
        return AuditRecord(key.action, key.decision, key.device_id, key.reason, detail)


@dataclass(slots=True)
class _Count:
    repeats: int = 0
    first_at: float = 0.0
    last_at: float = 0.0


class SamplingTable:
    """Which decisions to write now and which to summarize later. Not thread-safe."""

    def __init__(self, *, interval: float, max_keys: int) -> None:
        if interval <= 0 or max_keys < 1:
            raise ValueError("interval must be positive and max_keys at least 1")
        self._interval = interval
        self._max_keys = max_keys
        self._started: float | None = None
        self._counts: dict[SampleKey, _Count] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def due(self, now: float) -> bool:
        """Whether the current interval has ended."""
        return self._started is not None and now >= self._started + self._interval

    def observe(self, key: SampleKey, now: float) -> tuple[bool, list[Summary]]:
        """Count a decision: (write it now?, summaries of an interval that just closed)."""
        closed = self.close(now) if self.due(now) else []
        if self._started is None:
            self._started = now
        if key not in self._counts and len(self._counts) >= self._max_keys:
            key = SampleKey(OVERFLOW_SOURCE, key.action, key.decision, key.reason, None)
        count = self._counts.get(key)
        if count is None:
            self._counts[key] = _Count()
            return True, closed
        if count.repeats == 0:
            count.first_at = now
        count.repeats += 1
        count.last_at = now
        return False, closed

    def close(self, now: float) -> list[Summary]:
        """End the interval: the summaries of every key that repeated, and a fresh table."""
        summaries = [
            Summary(key, c.repeats, c.first_at, c.last_at)
            for key, c in self._counts.items()
            if c.repeats > 0
        ]
        self._counts.clear()
        self._started = None
        return summaries


class SampledAudit:
    """Appends sampled decisions and their summaries to the audit log. Thread-safe."""

    def __init__(
        self,
        audit: AuditLog,
        *,
        interval: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audit = audit
        self._clock = clock
        self._lock = threading.Lock()
        self._table = SamplingTable(interval=interval, max_keys=max_keys)

    def append(self, source: str, record: AuditRecord) -> None:
        """Write `record` if it is the first of its kind from `source` this interval;
        otherwise count it for the interval's summary."""
        key = SampleKey(source, record.action, record.decision, record.reason, record.device_id)
        with self._lock:
            write, summaries = self._table.observe(key, self._clock())
        records = [s.record() for s in summaries]
        if write:
            records.append(record)
        if records:
            self._audit.append_many(records)

    def flush(self, *, force: bool = False) -> int:
        """Write the summaries of an ended interval (of the current one too with
        `force`, at shutdown); returns how many were written."""
        now = self._clock()
        with self._lock:
            if not (force or self._table.due(now)):
                return 0
            summaries = self._table.close(now)
        if summaries:
            self._audit.append_many([s.record() for s in summaries])
        return len(summaries)
