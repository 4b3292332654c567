"""Signed checkpoints: a log rewritten, cut short or re-signed by someone without the
audit key no longer verifies against the key an auditor holds."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from auditlog import (
    AuditLog,
    AuditLogError,
    AuditRecord,
    checkpoint_signer,
    parse_audit_key,
    verify_log,
)
from tests.auditlog.tamper import execute, rewrite_chain

KEY = SigningKey(b"k" * 32)


def _write(path: Path, key: SigningKey = KEY) -> None:
    """Five entries, checkpoints after the 2nd and the 4th, one entry after those."""
    log = AuditLog(path, clock=iter(float(t) for t in range(100, 200)).__next__)
    sign = checkpoint_signer(key)
    try:
        for i in range(5):
            log.append(AuditRecord("envelope", "accepted", f"dev-{i}", None, f"entry {i}"))
            if i in (1, 3):
                assert log.append_checkpoint(sign) is not None
    finally:
        log.close()


def _verify(path: Path, key: SigningKey = KEY) -> tuple[bool, str | None, int]:
    log = AuditLog(path, read_only=True)
    try:
        report = verify_log(log, key.verify_key)
    finally:
        log.close()
    return report.ok, report.problem, report.uncovered


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.sqlite3"
    _write(path)
    return path


def test_a_valid_log_verifies_and_says_what_no_signature_covers_yet(path: Path) -> None:
    assert _verify(path) == (True, None, 1)


def test_an_edited_entry_with_the_whole_chain_rehashed_is_detected(path: Path) -> None:
    rewrite_chain(path, 2, "something else")
    log = AuditLog(path, read_only=True)
    assert log.verify_chain().ok  # the hash chain alone no longer tells
    log.close()

    ok, problem, _ = _verify(path)
    assert not ok
    assert problem is not None
    assert "checkpoint at seq 2" in problem
    assert "rewritten" in problem


def test_a_log_cut_off_before_a_checkpoint_is_detected(path: Path) -> None:
    execute(path, "DELETE FROM audit WHERE seq > 3")
    ok, problem, _ = _verify(path)
    assert not ok
    assert problem is not None
    assert "checkpoint at seq 4" in problem
    assert "truncated" in problem


def test_checkpoints_signed_with_another_key_are_detected(path: Path) -> None:
    # Whoever rewrote the log re-signs its heads with a key of their own.
    forger = SigningKey(b"f" * 32)
    rewrite_chain(path, 2, "something else")
    log = AuditLog(path)
    sign = checkpoint_signer(forger)
    heads = {c.seq: log.entries()[c.seq - 1].hash for c in log.checkpoints()}
    log.close()
    for seq, head in heads.items():
        execute(
            path,
            "UPDATE checkpoints SET head = ?, at = 0.0, signature = ? WHERE seq = ?",
            head,
            sign(seq, head, 0.0),
            seq,
        )

    assert _verify(path, forger)[0]  # consistent under the forger's own key
    ok, problem, _ = _verify(path)
    assert not ok
    assert problem == "checkpoint at seq 2: the signature does not verify under the audit key"


def test_entries_with_their_checkpoints_deleted_are_detected(path: Path) -> None:
    execute(path, "DELETE FROM checkpoints")
    ok, problem, _ = _verify(path)
    assert not ok
    assert problem == "no signed checkpoint: nothing ties this log to the audit key"


def test_a_checkpoint_is_written_only_after_enough_new_entries(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite3")
    sign = checkpoint_signer(KEY)
    first = log.append_checkpoint(sign)  # an empty log: seq 0, the genesis head
    again = log.append_checkpoint(sign)
    log.append(AuditRecord("enroll", "accepted"))
    early = log.append_checkpoint(sign, min_entries=2)
    log.append(AuditRecord("enroll", "accepted"))
    due = log.append_checkpoint(sign, min_entries=2)
    report = verify_log(log, KEY.verify_key)
    log.close()

    assert first is not None
    assert first.seq == 0
    assert (again, early) == (None, None)
    assert due is not None
    assert due.seq == 2
    assert report.ok
    assert report.checkpoints == 2


def test_an_audit_key_must_be_32_bytes_of_base64() -> None:
    text = base64.b64encode(bytes(KEY.verify_key)).decode()
    assert bytes(parse_audit_key(f" {text}\n")) == bytes(KEY.verify_key)
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(AuditLogError):
            parse_audit_key(bad)


def test_a_read_only_log_takes_no_checkpoint(path: Path) -> None:
    log = AuditLog(path, read_only=True)
    try:
        with pytest.raises(AuditLogError):
            log.append_checkpoint(checkpoint_signer(KEY))
    finally:
        log.close()
