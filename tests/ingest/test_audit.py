"""The hash-chained audit log: durable, queryable, and tamper-evident."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

from auditlog import GENESIS_HASH, AuditLog, AuditRecord


def _log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.sqlite3")


def _fill(log: AuditLog) -> None:
    log.append(AuditRecord("enroll", "accepted", "tpm-a"))
    log.append(AuditRecord("attest", "rejected", "tpm-a", "nonce_reused", "this nonce was used"))
    log.append_many(
        [
            AuditRecord("envelope", "accepted", "tpm-a", None, "envelope 1"),
            AuditRecord("envelope", "rejected", "dev-b", "software_key_refused", "envelope 2"),
        ]
    )


def test_entries_are_chained_and_survive_a_restart(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _fill(log)
    head = log.head()
    log.close()

    reopened = _log(tmp_path)
    reopened.append(AuditRecord("revoke", "accepted", "tpm-a", None, "stolen"))
    entries = reopened.entries()
    report = reopened.verify_chain()
    reopened.close()

    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert entries[3].hash == head
    assert report.ok
    assert report.entries == 5


def test_auditor_queries_by_device_and_decision(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _fill(log)

    rejected = log.entries(decision="rejected")
    device_a = log.entries(device_id="tpm-a")
    refused_software = log.entries(reason="software_key_refused")
    log.close()

    assert [e.reason for e in rejected] == ["nonce_reused", "software_key_refused"]
    assert [e.action for e in device_a] == ["enroll", "attest", "envelope"]
    assert [e.device_id for e in refused_software] == ["dev-b"]


def _tamper(tmp_path: Path, sql: str) -> None:
    db = sqlite3.connect(tmp_path / "audit.sqlite3")
    with db:
        db.execute(sql)
    db.close()


def test_an_edited_entry_is_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _fill(log)
    _tamper(tmp_path, "UPDATE audit SET reason = NULL, decision = 'accepted' WHERE seq = 2")

    report = log.verify_chain()
    log.close()

    assert not report.ok
    assert report.broken_at == 2
    assert report.problem == "the entry was altered"


def test_a_deleted_entry_is_detected(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _fill(log)
    _tamper(tmp_path, "DELETE FROM audit WHERE seq = 2")

    report = log.verify_chain()
    log.close()

    assert not report.ok
    assert report.broken_at == 3


def test_a_truncated_tail_is_detected_against_an_anchored_head(tmp_path: Path) -> None:
    log = _log(tmp_path)
    _fill(log)
    anchored = log.head()
    _tamper(tmp_path, "DELETE FROM audit WHERE seq = 4")

    plain = log.verify_chain()
    anchored_report = log.verify_chain(expected_head=anchored)
    log.close()

    assert plain.ok  # a shorter chain is self-consistent...
    assert not anchored_report.ok  # ...but does not end where the auditor anchored it
