"""Times the warehouse stores: those it can give back as times. Pure logic.

DuckDB's TIMESTAMPTZ reaches far past Python's calendar, and hands a value outside it
(year 10000 or year 0 in UTC, e.g. `9999-12-31T23:59:59-12:00` or
`0001-01-01T00:00:00+14:00`) back to Python as text, on which a comparison with a
datetime raises `TypeError`. So a row with such a time is refused before it is written
(`UnstorableValue`, one of `warehouse.UNSTORABLE`: the sink dead-letters that item and
stores the rest of its batch), and times read back to be compared are read as integer
microseconds since the epoch (`epoch_us`), which holds any stored time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["UnstorableValue", "check_storable_time", "epoch_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)


class UnstorableValue(ValueError):
    """A value of an item the warehouse must not store (it could not give it back)."""


def epoch_us(at: datetime) -> int:
    """Microseconds from the epoch to the aware `at`, exactly, for any aware datetime
    (also one whose UTC time is outside Python's calendar: no `OverflowError`)."""
    return (at - _EPOCH) // _MICROSECOND


def check_storable_time(what: str, at: datetime) -> None:
    """Raise `UnstorableValue` naming `what` unless `at` is aware and within years 1 to
    9999 once in UTC."""
    # The common case first, without comparing datetimes (with pydantic's own tzinfo
    # each comparison costs two offset calls): a time whose own year is 2 to 9998 is
    # within years 1 to 9999 in UTC too, an offset being less than a day.
    offset = at.utcoffset()
    if offset is not None and 1 < at.year < 9999:
        return
    if offset is None:
        raise UnstorableValue(f"{what} {at.isoformat()} has no time zone")
    # Comparing aware datetimes subtracts their offsets as timedeltas: never overflows.
    if not _FIRST <= at <= _LAST:
        raise UnstorableValue(
            f"{what} {at.isoformat()} is outside years 1 to 9999 in UTC (the warehouse "
            "would hand it back as text)"
        )
