"""The privacy ledger's state: pure accounting over its records (no I/O).

`LedgerState.apply` folds one journal record into the totals: a charge (`c`) or an
operator reset (`r`) adds to the lifetime, to its UTC day (whose cap is the strictest
of the policies charged under it) and to the recent charges the real-time rule looks
at; a suppression (`s`) is counted per signal. `is_old` is that rule: a charge is out
of the last 24 real hours only when the monotonic clock it was stamped on says so
(`ClockReading.seconds_since`: this boot's real-time clock, sleep included, or for a
charge an earlier release stamped in this boot, the clock it used), or, for an earlier
boot, the wall clock, while it is not behind the latest charge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from client._clock import ClockReading
from policies import EXACT_EPSILON, budget_day

__all__ = ["DAY_SECONDS", "LedgerState", "Stamp", "reading_of", "total_of"]

DAY_SECONDS = 86_400.0
"""The real-time window the daily cap holds over."""

_EXACT = EXACT_EPSILON  # shared with the ingest's ledger (policies._budget)


@dataclass(frozen=True, slots=True)
class Stamp:
    """A charge as the real-time rule sees it: its epsilon, its policy's daily cap, when."""

    eps: Decimal
    cap: Decimal
    at: ClockReading

    def to_json(self) -> list[Any]:
        """The snapshot's form: [eps, cap, wall, boot, mono]."""
        return [str(self.eps), str(self.cap), self.at.wall, self.at.boot, self.at.mono]

    @classmethod
    def from_json(cls, data: list[Any]) -> Stamp:
        """The inverse of `to_json`."""
        eps, cap, wall, boot, mono = data
        return cls(Decimal(eps), Decimal(cap), ClockReading(float(wall), str(boot), float(mono)))


def _reading(record: dict[str, Any]) -> ClockReading:
    return ClockReading(float(record["w"]), str(record["b"]), float(record["m"]))


@dataclass
class LedgerState:
    """Totals folded from a ledger's records (and its snapshot's): see the module."""

    gen: int = 0
    lifetime: Decimal = Decimal(0)
    days: dict[str, Decimal] = field(default_factory=dict)
    day_caps: dict[str, Decimal] = field(default_factory=dict)
    by_signal: dict[str, Decimal] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)
    recent: list[Stamp] = field(default_factory=list)
    max_wall: float = -math.inf
    charges: int = 0

    def apply(self, record: dict[str, Any]) -> None:
        """Fold one journal record in; KeyError/ValueError/TypeError if malformed."""
        kind = record["k"]
        if kind in ("c", "r"):
            eps, day, cap = Decimal(record["e"]), record["d"], Decimal(record["cap"])
            if kind == "r":
                self.lifetime = max(self.lifetime, Decimal(record["floor"]))
            else:
                signal = record["s"]
                self.by_signal[signal] = _EXACT.add(self.by_signal.get(signal, Decimal(0)), eps)
            self.lifetime = _EXACT.add(self.lifetime, eps)
            self.days[day] = _EXACT.add(self.days.get(day, Decimal(0)), eps)
            self.day_caps[day] = min(self.day_caps.get(day, cap), cap)
            stamp = Stamp(eps, cap, _reading(record))
            self.recent.append(stamp)
            self.max_wall = max(self.max_wall, stamp.at.wall)
            self.charges += 1
        elif kind == "s":
            signal = record["s"]
            self.suppressed[signal] = self.suppressed.get(signal, 0) + 1
        else:
            raise ValueError(f"unknown record kind {kind!r}")

    def is_old(self, stamp: Stamp, now: ClockReading) -> bool:
        """Whether `stamp` is provably more than 24 real hours before `now`."""
        elapsed = now.seconds_since(stamp.at)
        if elapsed is not None:
            return elapsed >= DAY_SECONDS
        # Another boot: only the wall clock can tell, and only while it has not been
        # set back behind a charge already made.
        return now.wall >= self.max_wall and now.wall - stamp.at.wall >= DAY_SECONDS

    def expires_in(self, stamp: Stamp, now: ClockReading) -> float:
        """Seconds until `stamp` leaves the real-time window (inf: cannot tell)."""
        elapsed = now.seconds_since(stamp.at)
        if elapsed is None:
            elapsed = now.wall - stamp.at.wall if now.wall >= self.max_wall else -math.inf
        return max(DAY_SECONDS - elapsed, 0.0)

    def prune(self, now: ClockReading) -> None:
        # A charge provably a day older than a reading stays so for every later reading.
        self.recent = [s for s in self.recent if not self.is_old(s, now)]

    def to_json(self) -> dict[str, Any]:
        """The snapshot record."""
        return {
            "k": "snapshot",
            "g": self.gen,
            "lifetime": str(self.lifetime),
            "days": {d: str(v) for d, v in self.days.items()},
            "day_caps": {d: str(v) for d, v in self.day_caps.items()},
            "by_signal": {s: str(v) for s, v in self.by_signal.items()},
            "suppressed": dict(self.suppressed),
            "recent": [s.to_json() for s in self.recent],
            "max_wall": self.max_wall if math.isfinite(self.max_wall) else None,
            "charges": self.charges,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerState:
        """The inverse of `to_json`; KeyError/ValueError/TypeError if malformed."""
        max_wall = data["max_wall"]
        return cls(
            gen=int(data["g"]),
            lifetime=Decimal(data["lifetime"]),
            days={d: Decimal(v) for d, v in data["days"].items()},
            day_caps={d: Decimal(v) for d, v in data["day_caps"].items()},
            by_signal={s: Decimal(v) for s, v in data["by_signal"].items()},
            suppressed={s: int(n) for s, n in data["suppressed"].items()},
            recent=[Stamp.from_json(s) for s in data["recent"]],
            max_wall=-math.inf if max_wall is None else float(max_wall),
            charges=int(data["charges"]),
        )

    def copy(self, gen: int) -> LedgerState:
        """A copy as generation `gen` (compaction, reset)."""
        return LedgerState(
            gen=gen,
            lifetime=self.lifetime,
            days=dict(self.days),
            day_caps=dict(self.day_caps),
            by_signal=dict(self.by_signal),
            suppressed=dict(self.suppressed),
            recent=list(self.recent),
            max_wall=self.max_wall,
            charges=self.charges,
        )


def reading_of(at: datetime) -> ClockReading:
    """`at` as the real time of a charge (a simulator's clock, or a test's)."""
    budget_day(at)  # refuses a naive time
    return ClockReading(at.timestamp(), "simulated", at.timestamp())


def total_of(stamps: Iterable[Stamp]) -> Decimal:
    """The exact sum of the stamps' epsilons."""
    total = Decimal(0)
    for stamp in stamps:
        total = _EXACT.add(total, stamp.eps)
    return total
