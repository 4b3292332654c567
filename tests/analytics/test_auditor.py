"""`quietwire audit report` and `build_auditor_report` on a real warehouse and audit log:
what data exists, what retention deleted and when, which deletion requests were applied
(and erased), whether the chain verifies; JSON, CSV and tables; exit codes."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from analytics import build_auditor_report, open_warehouse
from auditlog import AuditLog, AuditRecord
from quietwire.cli import app
from schemas import Tier
from tests.analytics.test_privacy_warehouse import HOUR, T0, _deletion, _envelope
from warehouse import connect, write_envelopes

# Three hourly windows for dev-a and dev-b (each: 1 health, 1 content, 2 performance
# values); dev-a revokes content consent; at AFTER_CONTENT the default policy's 7 days
# of content have passed for two of the windows.
AFTER_CONTENT = (T0 + timedelta(days=7, hours=2, minutes=30)).isoformat()


def _accepted(request_id: str, device: str, tier: str) -> AuditRecord:
    # The entry the ingest appends when it accepts a deletion request (ingest/_routes.py).
    detail = f"deletion {request_id} tier={tier} assurance=software"
    return AuditRecord("deletion", "accepted", device, None, detail)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """(warehouse, audit log, id of an applied request, id of one still in transit)."""
    db, log = tmp_path / "warehouse.duckdb", tmp_path / "audit.sqlite3"
    applied = _deletion("dev-a", Tier.CONTENT, T0 + 5 * HOUR)
    transit = str(uuid.uuid4())
    conn = connect(db)
    write_envelopes(conn, [_envelope(d, w) for d in ("dev-a", "dev-b") for w in range(3)])
    write_envelopes(conn, [applied])  # as the sink does: its bytes await a rewrite
    conn.close()
    audit = AuditLog(log)
    audit.append(AuditRecord("enroll", "accepted", "dev-a"))
    audit.append(_accepted(str(applied.deletion.request_id), "dev-a", "content"))
    audit.append(_accepted(transit, "dev-b", "health"))
    audit.close()
    return db, log, str(applied.deletion.request_id), transit


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _report(db: Path, log: Path, *extra: str) -> dict[str, Any]:
    code, out, err = _run("audit", "report", "--db", str(db), "--log", str(log), *extra)
    assert code == 0, err
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def test_the_report_answers_what_exists_what_was_deleted_and_whether_the_log_holds(
    files: tuple[Path, Path, str, str],
) -> None:
    db, log, applied, transit = files
    before = _report(db, log, "--format", "json")
    assert before["audit_log"]["ok"] is True
    assert before["audit_log"]["entries"] == 3
    assert before["erasures_pending"] == 1
    by_id = {d["request_id"]: d for d in before["deletion_requests"]}
    assert by_id[applied]["status"] == "applied, erasure pending"
    assert by_id[applied]["rows_deleted"] == 3
    assert (by_id[applied]["audit_seq"], by_id[applied]["in_audit_log"]) == (2, True)
    assert by_id[transit]["status"] == "accepted, not applied"
    assert by_id[transit]["rows_deleted"] is None
    values = {
        (r["tier"], r["region"]): r for r in before["inventory"] if r["table"] == "released_values"
    }
    assert {k: v["rows"] for k, v in values.items()} == {
        ("content", "eu"): 3,  # dev-b's three; dev-a's were deleted
        ("health", "eu"): 6,
        ("performance", "eu"): 12,
    }
    assert values[("health", "eu")]["oldest"] == T0.isoformat()
    assert values[("health", "eu")]["newest"] == (T0 + 3 * HOUR).isoformat()
    assert before["retention_runs"] == []

    code, out, err = _run(
        "retention", "--db", str(db), "--now", AFTER_CONTENT, "--audit-log", str(log)
    )
    assert code == 0, err
    assert "file rewritten without the deleted values (2 deletions erased" in out

    after = _report(db, log, "--format", "json")
    assert after["erasures_pending"] == 0
    assert after["audit_log"]["ok"] is True
    assert after["audit_log"]["entries"] == 6  # + one retention entry per tier
    by_id = {d["request_id"]: d for d in after["deletion_requests"]}
    assert by_id[applied]["status"] == "applied, erased"
    assert by_id[applied]["erased_at"] is not None
    runs = {r["tier"]: r for r in after["retention_runs"]}
    assert runs["content"]["released_values"] == 2  # dev-b's two old windows
    assert runs["content"]["rows_deleted"] == 2
    assert runs["content"]["cutoff"] == (T0 + 2 * HOUR + timedelta(minutes=30)).isoformat()
    assert runs["content"]["erased_at"] is not None
    assert runs["health"]["rows_deleted"] == 0
    assert sorted(r["audit_seq"] for r in runs.values()) == [4, 5, 6]


def test_a_policy_counts_what_is_past_retention(files: tuple[Path, Path, str, str]) -> None:
    db, log, _, _ = files
    rep = _report(db, log, "--format", "json", "--policy", "policies/default.yaml")
    rep_now = _report(
        db, log, "--format", "json", "--policy", "policies/default.yaml", "--now", AFTER_CONTENT
    )
    content = [
        r for r in rep_now["inventory"] if (r["table"], r["tier"]) == ("released_values", "content")
    ]
    assert content[0]["past_retention"] == 2
    envelopes = [r for r in rep["inventory"] if r["table"] == "envelopes"]
    assert envelopes[0]["rows"] == 6
    assert envelopes[0]["past_retention"] is None  # not covered by retention


def test_a_broken_chain_is_exit_1_and_says_where(files: tuple[Path, Path, str, str]) -> None:
    db, log, _, _ = files
    with sqlite3.connect(log) as raw:  # an operator hides that a request was accepted
        raw.execute("UPDATE audit SET detail = 'nothing' WHERE seq = 2")
    code, out, _ = _run("audit", "report", "--db", str(db), "--log", str(log))
    assert code == 1
    assert "BROKEN at entry seq 2: the entry was altered" in out

    code, out, _ = _run("audit", "report", "--db", str(db), "--log", str(log), "--format", "json")
    assert code == 1
    chain = json.loads(out)["audit_log"]
    assert (chain["ok"], chain["broken_at"]) == (False, 2)


def test_an_anchored_head_catches_a_cut_tail(files: tuple[Path, Path, str, str]) -> None:
    db, log, _, _ = files
    audit = AuditLog(log, read_only=True)
    head = audit.head()
    audit.close()
    assert _report(db, log, "--format", "json", "--head", head)["audit_log"]["anchored"]
    with sqlite3.connect(log) as raw:
        raw.execute("DELETE FROM audit WHERE seq = 3")
    code, _, _ = _run("audit", "report", "--db", str(db), "--log", str(log), "--head", head)
    assert code == 1


def test_csv_prints_one_section(files: tuple[Path, Path, str, str]) -> None:
    db, log, applied, transit = files
    code, out, err = _run(
        "audit", "report", "--db", str(db), "--log", str(log), "--format", "csv",
        "--section", "deletions",
    )  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["request_id"]: r["status"] for r in rows} == {
        applied: "applied, erasure pending",
        transit: "accepted, not applied",
    }
    code, out, _ = _run("audit", "report", "--db", str(db), "--format", "csv")
    header = out.splitlines()[0].split(",")
    assert header == ["table", "tier", "region", "rows", "oldest", "newest", "past_retention"]


def test_the_table_format_shows_each_section(files: tuple[Path, Path, str, str]) -> None:
    db, log, applied, _ = files
    code, out, err = _run("audit", "report", "--db", str(db), "--log", str(log))
    assert code == 0, err
    assert f"audit log {log}: OK, 3 entries" in out
    assert "deleted but not yet erased from the file: 1 deletion" in out
    for title in ("data held, by table, tier and region", "retention runs (0)"):
        assert title in out
    assert "deletion requests (2)" in out
    assert applied[:8] in out


def test_without_a_log_the_warehouse_alone_is_reported(
    files: tuple[Path, Path, str, str],
) -> None:
    db, _, applied, transit = files
    conn = open_warehouse(db)
    try:
        report = build_auditor_report(conn, source=str(db))
    finally:
        conn.close()
    assert report.chain is None
    assert isinstance(report.deletions, pl.DataFrame)
    assert report.deletions["request_id"].to_list() == [applied]
    assert report.deletions["in_audit_log"].to_list() == [None]
    assert transit not in report.deletions["request_id"].to_list()


def test_one_request_id_of_two_devices_is_two_deletions_each_matched_to_its_entry(
    tmp_path: Path,
) -> None:
    """Request ids are unique per device: two devices' requests with one id are both
    applied, each erased on its own and matched to its own audit entry."""
    db, log = tmp_path / "warehouse.duckdb", tmp_path / "audit.sqlite3"
    first = _deletion("dev-a", Tier.CONTENT, T0 + 5 * HOUR)
    shared = first.deletion.request_id
    second = _deletion("dev-b", Tier.HEALTH, T0 + 6 * HOUR)
    second = second.model_copy(
        update={"deletion": second.deletion.model_copy(update={"request_id": shared})}
    )
    conn = connect(db)
    write_envelopes(conn, [_envelope(d, w) for d in ("dev-a", "dev-b") for w in range(3)])
    write_envelopes(conn, [first])
    conn.execute("UPDATE erasures SET erased_at = ?", [T0 + 6 * HOUR])  # rewritten since
    write_envelopes(conn, [second])
    conn.close()
    audit = AuditLog(log)
    audit.append(_accepted(str(shared), "dev-a", "content"))
    audit.append(_accepted(str(shared), "dev-b", "health"))
    audit.close()
    deletions = _report(db, log, "--format", "json")["deletion_requests"]
    assert [
        (d["request_id"], d["device_id"], d["tier"], d["rows_deleted"], d["status"])
        for d in deletions
    ] == [
        (str(shared), "dev-a", "content", 3, "applied, erased"),
        (str(shared), "dev-b", "health", 3, "applied, erasure pending"),
    ]
    assert [(d["audit_seq"], d["in_audit_log"]) for d in deletions] == [(1, True), (2, True)]


def test_a_file_not_yet_migrated_is_read_with_its_erasures(
    files: tuple[Path, Path, str, str],
) -> None:
    """A report opens the file read-only, never migrating it: erasures of a version-2
    file have no device (its request ids were unique across devices) and still match."""
    db, _, applied, _ = files
    conn = connect(db)
    conn.execute("DROP TABLE erasures")
    conn.execute(
        "CREATE TABLE erasures (source VARCHAR NOT NULL, source_id UUID NOT NULL, "
        "deleted_at TIMESTAMPTZ NOT NULL, rows_deleted BIGINT NOT NULL, "
        "erased_at TIMESTAMPTZ, PRIMARY KEY (source, source_id))"
    )
    conn.execute(
        "INSERT INTO erasures VALUES ('deletion_request', ?, ?, 3, ?)", [applied, T0, T0 + HOUR]
    )
    conn.execute("UPDATE schema_meta SET version = 2")
    conn.close()
    conn = open_warehouse(db)
    try:
        report = build_auditor_report(conn, source=str(db))
    finally:
        conn.close()
    assert report.deletions.select("request_id", "status").rows() == [(applied, "applied, erased")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--head", "ab" * 32], "--head needs --log"),
        (["--audit-key", "AAAA"], "--audit-key needs --log"),
        (["--log", "LOG", "--head", "xyz"], "--head must be 64 hex digits"),
        (["--log", "missing.sqlite3"], "no such audit log file"),
        (["--now", "yesterday", "--policy", "policies/default.yaml"], "is not an ISO 8601"),
        (["--policy", "nope.yaml"], "nope.yaml"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    files: tuple[Path, Path, str, str], args: list[str], message: str
) -> None:
    db, log, _, _ = files
    argv = [str(log) if a == "LOG" else a for a in args]
    code, _, err = _run("audit", "report", "--db", str(db), *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_warehouse_is_exit_2_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "none.duckdb"
    code, _, err = _run("audit", "report", "--db", str(missing))
    assert (code, missing.exists()) == (2, False)
    assert "no such warehouse file" in err
