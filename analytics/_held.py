"""What a warehouse holds: its signals, each one's kind, and the labels its figures carry.

For errors that name the real problem: a misspelt signal, a counter where a histogram
is needed, a label no figure of the signal carries. Without these a query over such an
argument simply matches nothing, and "no rows" reads like an answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import duckdb

from analytics._cube import has_aggregates
from analytics._errors import InvalidQueryError

__all__ = ["SignalKind", "check_labels_held", "check_signal_held", "held_labels", "held_signals"]

SignalKind = Literal["counter", "histogram"]


def _tables(conn: duckdb.DuckDBPyConnection) -> list[str]:
    return ["released_values", *(["fleet_aggregates"] if has_aggregates(conn) else [])]


def held_signals(conn: duckdb.DuckDBPyConnection) -> dict[str, SignalKind]:
    """Every signal with released values or secure aggregates, and its kind: a histogram
    has bucket figures, a counter has none."""
    union = " UNION ".join(f"SELECT DISTINCT signal, kind FROM {t}" for t in _tables(conn))
    rows = conn.execute(
        f"SELECT signal, bool_or(kind = 'bucket') FROM ({union}) GROUP BY signal ORDER BY signal"
    ).fetchall()
    return {str(s): "histogram" if bucket else "counter" for s, bucket in rows}


def held_labels(conn: duckdb.DuckDBPyConnection, signal: str) -> list[str]:
    """The labels any figure of `signal` carries, sorted."""
    union = " UNION ".join(
        f"SELECT DISTINCT attributes::VARCHAR AS a FROM {t} WHERE signal = $signal"
        for t in _tables(conn)
    )
    rows = conn.execute(
        f"SELECT DISTINCT unnest(json_keys(a::JSON)) FROM ({union}) ORDER BY 1",
        {"signal": signal},
    ).fetchall()
    return [str(row[0]) for row in rows]


def check_signal_held(
    conn: duckdb.DuckDBPyConnection, signal: str, kind: SignalKind | None = None
) -> None:
    """InvalidQueryError unless the warehouse holds `signal` (of `kind`, if given),
    naming the signals it holds (of that kind)."""
    if _holds(conn, signal, kind):
        return  # the common case, answered by the first matching rows: no full scan
    held = held_signals(conn)
    if signal not in held:
        raise InvalidQueryError(
            f"unknown signal {signal!r}: the warehouse holds {_listed(held)}"
            if held
            else f"unknown signal {signal!r}: the warehouse holds no released values"
        )
    if kind is not None and held[signal] != kind:
        of_kind = [s for s, k in held.items() if k == kind]
        raise InvalidQueryError(
            f"{signal!r} is a {held[signal]}, not a {kind} (the {kind}s held: "
            f"{_listed(of_kind) if of_kind else 'none'})"
        )


def _holds(conn: duckdb.DuckDBPyConnection, signal: str, kind: SignalKind | None) -> bool:
    """Whether some table holds `signal` as `kind` (a histogram has bucket figures, a
    counter none), each question stopping at its first matching row."""
    tables = _tables(conn)

    def any_row(condition: str) -> str:
        return " OR ".join(
            f"EXISTS (SELECT 1 FROM {t} WHERE signal = $signal{condition})" for t in tables
        )

    bucket = " AND kind = 'bucket'"
    query = f"SELECT {any_row('')}, {any_row(bucket)}"
    ((found, buckets),) = conn.execute(query, {"signal": signal}).fetchall()
    if not found:
        return False
    return kind is None or (kind == "histogram") == bool(buckets)


def check_labels_held(
    conn: duckdb.DuckDBPyConnection, signal: str, labels: Iterable[str], *, option: str = ""
) -> None:
    """InvalidQueryError naming the first of `labels` no figure of `signal` carries, and
    the labels its figures do carry."""
    wanted = list(labels)
    if not wanted:
        return
    carried = held_labels(conn, signal)
    for label in wanted:
        if label not in carried:
            where = f"{option}: " if option else ""
            raise InvalidQueryError(
                f"{where}unknown label {label!r}: no figure of {signal!r} carries it "
                f"(its labels: {_listed(carried) if carried else 'none'})"
            )


def _listed(names: Iterable[str]) -> str:
    return ", ".join(names)
