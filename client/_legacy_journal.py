"""The previous client release's ledger files, migrated once to today's format.

That release framed each journal line (and its snapshot) as `<crc32, 8 hex digits>
<json>\\n`, where today's are keyed BLAKE2b MACs (`client._journal.LineFraming`). Its
records were the same minus what the ledger has learned since: a charge was
`{"k": "c", "s": signal, "e": epsilon, "d": UTC day}`, a suppression
`{"k": "s", "s", "d"}`, a header `{"k": "h", "g": generation}`; a snapshot held the
totals (`lifetime`, `days`, `by_signal`, `suppressed`) of generation `g`.

`plan_migration` is pure: from the files' bytes it computes what to write, or None
when they are not one clean old-format ledger (a line that fails its CRC, lines of both
formats, a generation that does not follow): those stay refused, as before, until an
operator resets them. A converted charge keeps its signal, epsilon and day and gets
what the old format never recorded, conservatively:

- its daily cap is the current policy's (the day's cap is the strictest of its
  charges', so this never raises a day's cap above today's policy);
- its time is the end of its UTC day, or the migration's time if earlier: no later
  than it was really made, so for the 24-real-hours rule it counts as recent for as
  long as it possibly could; it is stamped with a boot of its own (`LEGACY_BOOT`), so
  it is aged by the wall clock, under the ledger's rules for earlier boots.

A snapshot's per-day totals become one such charge per day still within 24 hours of
its end. Writing is the ledger's: a journal without a snapshot is replaced atomically
by its conversion (a crash leaves the old or the new file). With a snapshot, the
folded state becomes a new-format snapshot one generation on, then the journal a bare
header of that generation; a crash in between leaves a new snapshot and the old
journal one generation behind it, which the next open recognises (`Migration` with
only a journal: its records are in the snapshot).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from client._clock import ClockReading
from client._journal import LineFraming
from client._ledger_state import DAY_SECONDS, LedgerState, Stamp

__all__ = ["LEGACY_BOOT", "Migration", "is_legacy", "plan_migration"]

LEGACY_BOOT = "legacy-crc32"
"""The boot a migrated charge is stamped with: none the device will ever run in."""

_CRC = re.compile(rb"[0-9a-f]{8}")


@dataclass(frozen=True, slots=True)
class Migration:
    """What to write, in order: the snapshot (if any), then the journal."""

    journal: bytes
    snapshot: bytes | None
    charges: int
    """How many old charge records the migration carried over (for the log)."""


def is_legacy(data: bytes) -> bool:
    """Whether a journal (or snapshot) starts with an old-format (CRC-32) line."""
    token, sep, _ = data.partition(b" ")
    return bool(sep) and _CRC.fullmatch(token) is not None


def _unframe(line: bytes) -> dict[str, Any] | None:
    """The record in one old-format line, or None if it fails its CRC or does not parse."""
    crc, sep, payload = line.partition(b" ")
    if not sep or _CRC.fullmatch(crc) is None or int(crc, 16) != zlib.crc32(payload):
        return None
    try:
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _end_of_day(day: str) -> float:
    start = datetime.combine(date.fromisoformat(day), time(), tzinfo=UTC)
    return (start + timedelta(days=1)).timestamp()


def _reading(day: str, now_wall: float) -> ClockReading:
    wall = min(_end_of_day(day), now_wall)
    return ClockReading(wall, LEGACY_BOOT, wall)


def _convert(record: dict[str, Any], cap: Decimal, policy: str, now_wall: float) -> dict[str, Any]:
    """One old record in today's form; KeyError/ValueError/TypeError if malformed."""
    kind = record["k"]
    if kind == "h":
        return {"k": "h", "g": int(record["g"])}
    if kind == "s":
        return {"k": "s", "s": str(record["s"]), "d": str(record["d"])}
    if kind != "c":
        raise ValueError(f"unknown record kind {kind!r}")
    day, at = str(record["d"]), _reading(str(record["d"]), now_wall)
    return {
        "k": "c",
        "s": str(record["s"]),
        "e": str(Decimal(record["e"])),
        "d": day,
        "p": policy,
        "cap": str(cap),
        "w": at.wall,
        "b": at.boot,
        "m": at.mono,
    }


def _snapshot_state(record: dict[str, Any], cap: Decimal, now_wall: float) -> LedgerState:
    """An old snapshot's totals as today's state (see the module docstring)."""
    days = {str(d): Decimal(v) for d, v in record["days"].items()}
    recent = [
        Stamp(spent, cap, _reading(day, now_wall))
        for day, spent in sorted(days.items())
        if spent > 0 and now_wall - _end_of_day(day) < DAY_SECONDS
    ]
    return LedgerState(
        gen=int(record["g"]),
        lifetime=Decimal(record["lifetime"]),
        days=days,
        day_caps=dict.fromkeys(days, cap),
        by_signal={str(s): Decimal(v) for s, v in record["by_signal"].items()},
        suppressed={str(s): int(n) for s, n in record["suppressed"].items()},
        recent=recent,
        max_wall=max((s.at.wall for s in recent), default=float("-inf")),
    )


def _journal_records(data: bytes) -> list[dict[str, Any]] | None:
    """Every complete line's record (a torn last line, without its newline, is left
    out, as the ledger cuts it off), or None if any fails its CRC or the header lacks."""
    *lines, _torn = data.split(b"\n")
    records = [_unframe(line) for line in lines]
    if not records or any(r is None for r in records):
        return None
    checked = [r for r in records if r is not None]
    return checked if checked[0].get("k") == "h" else None


def plan_migration(
    journal: bytes,
    snapshot: bytes | None,
    framing: LineFraming,
    *,
    cap: Decimal,
    policy: str,
    now_wall: float,
) -> Migration | None:
    """What to write to migrate an old-format ledger (see the module docstring), or
    None if `journal` is not one clean old-format journal whose generation follows
    `snapshot`'s (then nothing is written, and the ledger refuses the files)."""
    if not is_legacy(journal):
        return None
    records = _journal_records(journal)
    if records is None:
        return None
    try:
        gen = int(records[0]["g"])
        converted = [_convert(r, cap, policy, now_wall) for r in records]
        charges = sum(1 for r in records if r["k"] == "c")
        if snapshot is None:
            if gen != 0:
                return None  # its snapshot is gone: charges would be lost
            state = LedgerState()
            for record in converted[1:]:
                state.apply(record)  # validates every record
            return Migration(b"".join(framing.frame(r) for r in converted), None, charges)
        if not is_legacy(snapshot):
            # A migration that a crash cut short after its snapshot: the old journal,
            # one generation behind, is folded into it already.
            done = framing.unframe(snapshot.rstrip(b"\n"))
            if done is None or done.get("k") != "snapshot" or int(done["g"]) != gen + 1:
                return None
            return Migration(framing.frame({"k": "h", "g": gen + 1}), None, 0)
        old = _unframe(snapshot.rstrip(b"\n"))
        if old is None or old.get("k") != "snapshot":
            return None
        state = _snapshot_state(old, cap, now_wall)
        if gen == state.gen:
            for record in converted[1:]:
                state.apply(record)
        elif gen == state.gen - 1:
            charges = 0  # an old compaction's leftover: its records are in the snapshot
        else:
            return None
        folded = state.copy(gen=state.gen + 1)
        return Migration(
            framing.frame({"k": "h", "g": folded.gen}), framing.frame(folded.to_json()), charges
        )
    except (KeyError, ValueError, TypeError, ArithmeticError):
        return None
