"""`quietwire retention --audit-log`: each run is an audit entry per tier (what, cutoff,
when, erased), the warehouse records it too, and a bad log path changes nothing."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from auditlog import AuditLog, AuditRecord
from quietwire.cli import app
from tests.analytics.test_privacy_warehouse import T0, _envelope
from warehouse import connect, write_envelopes

AFTER_CONTENT = (T0 + timedelta(days=7, hours=2, minutes=30)).isoformat()


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    conn = connect(path)
    write_envelopes(conn, [_envelope("dev-a", w) for w in range(3)])
    conn.close()
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.sqlite3"
    audit = AuditLog(path)  # as the ingest leaves it: one decision so far
    audit.append(AuditRecord("enroll", "accepted", "dev-a"))
    audit.close()
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _content_rows(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as conn:
        ((n,),) = conn.execute(
            "SELECT count(*) FROM released_values WHERE tier = 'content'"
        ).fetchall()
    return int(n)


def test_a_run_is_one_audit_entry_per_tier(warehouse: Path, log: Path) -> None:
    code, out, err = _run(
        "retention", "--db", str(warehouse), "--now", AFTER_CONTENT, "--audit-log", str(log)
    )
    assert code == 0, err
    assert f"audit log {log}: entries 2-4 appended" in out

    code, out, err = _run(
        "audit", "list", "--log", str(log), "--action", "retention", "--decision", "applied",
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    entries = {e["detail"].split(" tier=")[1].split()[0]: e for e in json.loads(out)}
    assert sorted(entries) == ["content", "health", "performance"]
    content = entries["content"]["detail"]
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        ((run_id, ran_at),) = conn.execute(
            "SELECT DISTINCT CAST(run_id AS VARCHAR), ran_at FROM retention_runs"
        ).fetchall()
        ((erased_at,),) = conn.execute("SELECT erased_at FROM erasures").fetchall()
    assert content.startswith(f"retention run {run_id} tier=content keep_days=7 ")
    assert "cutoff=2026-03-02T02:30:00+00:00" in content
    assert (
        "rows_deleted=2 (released_values=2 fleet_aggregates=0 prio_reports=0 dead_letters=0)"
        in content
    )
    assert f"ran_at={ran_at.isoformat()}" in content
    assert f"erased={erased_at.isoformat()}" in content
    assert "rows_deleted=0" in entries["health"]["detail"]
    code, out, _ = _run("audit", "verify", "--log", str(log))
    assert (code, "audit log OK: 4 entries" in out) == (0, True)


def test_a_dry_run_writes_no_entry(warehouse: Path, log: Path) -> None:
    code, _, err = _run(
        "retention", "--db", str(warehouse), "--now", AFTER_CONTENT, "--dry-run",
        "--audit-log", str(log),
    )  # fmt: skip
    assert code == 0, err
    audit = AuditLog(log, read_only=True)
    assert len(audit.entries()) == 1
    audit.close()


@pytest.mark.parametrize("kind", ["missing", "foreign"])
def test_a_bad_audit_log_is_exit_2_and_deletes_nothing(
    warehouse: Path, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "other.sqlite3"
    if kind == "foreign":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE notes (x)")
    code, _, err = _run(
        "retention", "--db", str(warehouse), "--now", AFTER_CONTENT, "--audit-log", str(path)
    )
    assert code == 2
    assert err.startswith("quietwire: error: --audit-log ")
    assert _content_rows(warehouse) == 3
    assert path.exists() == (kind == "foreign")  # never created


def test_a_warehouse_from_before_retention_records_gains_them(warehouse: Path) -> None:
    with duckdb.connect(str(warehouse)) as conn:
        conn.execute("DROP TABLE retention_runs")
        conn.execute("DROP TABLE erasures")
    code, out, err = _run("retention", "--db", str(warehouse), "--now", AFTER_CONTENT)
    assert code == 0, err
    assert "2 released values deleted" in out
    assert "file rewritten without the deleted values (1 deletion erased" in out
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        ((n,),) = conn.execute("SELECT sum(rows_deleted) FROM retention_runs").fetchall()
    assert n == 2
