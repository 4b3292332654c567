"""What the fleet's figures rest on: which devices, how their keys are anchored, what
was withheld, and what the intervals promise.

- Devices per window (`envelopes`, one row per device release): how many, and of them
  how many signed with an attested TPM key (`tpm`) and how many with a software key.
- Suppressed releases (`suppressions`): a device whose privacy ledger had no budget left
  withholds the release and says so in its envelope (by signal). Those devices' usage
  is *not* in any total: a figure is a sum over the devices that released. The count is
  shown next to the totals so a drop in a total can be told from a drop in usage.
- The coverage statement: an interval covers the truth *after contribution bounds*
  (each device's window clamped to the policy's bounds), not the raw usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

__all__ = ["COVERAGE_STATEMENT", "FleetBasis", "fleet_basis"]

COVERAGE_STATEMENT = (
    "Intervals cover the fleet's truth after contribution bounds: each device's window is "
    "clamped to the policy's per-window bounds before noise, so a heavy user's excess is "
    "not in any figure. Releases a device withheld because its privacy budget was spent "
    "(suppressed) are not in the totals either; they are counted per signal below."
)


@dataclass(frozen=True, slots=True)
class FleetBasis:
    """What the figures rest on, as Polars frames."""

    devices: pl.DataFrame
    """Per window: devices, attested (TPM key), software (software key)."""
    suppressed: pl.DataFrame
    """Per signal: releases withheld, devices that withheld, windows affected."""
    statement: str = COVERAGE_STATEMENT

    @property
    def suppressed_total(self) -> int:
        """Releases withheld over every signal and window."""
        return int(self.suppressed["releases"].sum()) if self.suppressed.height else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: both tables as records, and the statement."""
        return {
            "devices": self.devices.to_dicts(),
            "suppressed": self.suppressed.to_dicts(),
            "suppressed_total": self.suppressed_total,
            "statement": self.statement,
        }


def _frame(
    conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any], schema: dict[str, Any]
) -> pl.DataFrame:
    rel = conn.sql(sql, params=params)
    if rel is None:  # pragma: no cover - a SELECT always gives a relation
        raise AssertionError("query returned no relation")
    frame = rel.pl()
    return frame if frame.height else pl.DataFrame(schema=schema)


def _has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = ?",
        [name],
    ).fetchall()
    return bool(rows[0][0])


def fleet_basis(
    conn: duckdb.DuckDBPyConnection,
    *,
    signal: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> FleetBasis:
    """Devices by key anchoring per window, and releases withheld per signal, over the
    windows in [since, until] (and one signal's suppressions when `signal` is given)."""
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if since is not None:
        where.append("window_start >= ?")
        params.append(since)
    if until is not None:
        where.append("window_end <= ?")
        params.append(until)
    clause = " AND ".join(where)
    devices = _frame(
        conn,
        f"""
        SELECT window_start, count(DISTINCT device_id) AS devices,
               count(DISTINCT device_id) FILTER (WHERE assurance = 'tpm') AS attested,
               count(DISTINCT device_id) FILTER (WHERE assurance <> 'tpm') AS software
        FROM envelopes WHERE {clause}
        GROUP BY window_start ORDER BY window_start
        """,
        params,
        {
            "window_start": pl.Datetime("us", "UTC"),
            "devices": pl.Int64,
            "attested": pl.Int64,
            "software": pl.Int64,
        },
    )
    schema = {"signal": pl.String, "releases": pl.Int64, "devices": pl.Int64, "windows": pl.Int64}
    if not _has_table(conn, "suppressions"):
        return FleetBasis(devices, pl.DataFrame(schema=schema))
    s_where, s_params = [clause], list(params)
    if signal is not None:
        s_where.append("signal = ?")
        s_params.append(signal)
    suppressed = _frame(
        conn,
        f"""
        SELECT signal, sum(releases)::BIGINT AS releases,
               count(DISTINCT device_id) AS devices,
               count(DISTINCT window_start) AS windows
        FROM suppressions WHERE {" AND ".join(s_where)}
        GROUP BY signal ORDER BY signal
        """,
        s_params,
        schema,
    )
    return FleetBasis(devices, suppressed)
