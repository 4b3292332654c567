"""`quietwire audit verify | list` on an audit log the real ingest app wrote: the chain
verifies, tampering is caught (exit 1), queries filter, and the file is only read."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditlog import AUDIT_ACTIONS, AuditRecord
from ingest import AuditLog, IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from quietwire.cli import app
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client, counter_aggregate

REGION = "eu-test"


@pytest.fixture(scope="module")
def ingest_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit log with accepted and rejected envelopes and a refused revocation."""
    root = tmp_path_factory.mktemp("ingest")
    asyncio.run(_write_log(root))
    return root / "state" / "audit.sqlite3"


async def _write_log(root: Path) -> None:
    key = write_private_key(root / "ingest.key")
    settings = IngestSettings(
        policy_paths=SERVED_POLICIES,
        region=REGION,
        private_key_path=root / "ingest.key",
        state_dir=root / "state",
    )
    device = Device(REGION)
    content = {**counter_aggregate(), "signal": "prompt.personal_data", "tier": "content"}
    tiers = ["health", "performance", "content"]
    items = [
        device.item(key.public_key),
        device.item(key.public_key, device.envelope(aggregates=[content], consented_tiers=tiers)),
    ]
    async with asgi_client(create_app(settings, bus=InMemoryEnvelopeBus())) as client:
        resp = await client.post("/v1/envelopes", json={"envelopes": items})
        assert resp.status_code == 422
        revoke = await client.post("/v1/devices/tpm-" + "0" * 32 + "/revoke", json={"reason": "x"})
        assert revoke.status_code == 401


@pytest.fixture
def log(ingest_log: Path, tmp_path: Path) -> Path:
    """A copy per test, so tampering stays in its test."""
    copy = tmp_path / "audit.sqlite3"
    shutil.copy(ingest_log, copy)
    return copy


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["audit", *args])
    return result.exit_code, result.stdout, result.stderr


def _head(path: Path) -> str:
    audit = AuditLog(path, read_only=True)
    try:
        return audit.head()
    finally:
        audit.close()


def _tamper(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(sql)
    db.close()


def test_verify_prints_the_head_of_an_intact_log(log: Path) -> None:
    head = _head(log)
    code, out, err = _run("verify", "--log", str(log))
    assert code == 0, err
    assert "audit log OK: 3 entries" in out
    assert f"head: {head}" in out

    code, out, _ = _run("verify", "--log", str(log), "--head", head.upper())
    assert code == 0
    assert "ends at the anchored head" in out


def test_an_edited_entry_is_exit_1_naming_it(log: Path) -> None:
    _tamper(log, "UPDATE audit SET decision = 'accepted' WHERE seq = 2")
    code, out, _ = _run("verify", "--log", str(log))
    assert code == 1
    assert "BROKEN at entry seq 2: the entry was altered" in out
    assert "1 entries before it verify" in out


def test_a_deleted_entry_is_exit_1(log: Path) -> None:
    _tamper(log, "DELETE FROM audit WHERE seq = 2")
    code, out, _ = _run("verify", "--log", str(log))
    assert code == 1
    assert "BROKEN at entry seq 3: expected seq 2" in out


def test_a_cut_off_tail_is_caught_against_the_anchored_head(log: Path) -> None:
    anchored = _head(log)
    _tamper(log, "DELETE FROM audit WHERE seq = 3")
    assert _run("verify", "--log", str(log))[0] == 0  # a shorter chain is still a chain
    code, out, _ = _run("verify", "--log", str(log), "--head", anchored)
    assert code == 1
    assert "does not end at the anchored head" in out


def test_bad_input_is_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "none.sqlite3"
    code, _, err = _run("verify", "--log", str(missing))
    assert (code, missing.exists()) == (2, False)
    assert "no such audit log file" in err

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not sqlite" * 100)
    assert _run("list", "--log", str(garbage))[0] == 2

    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).close()
    code, _, err = _run("verify", "--log", str(other))
    assert code == 2
    assert "not a Quietwire audit log" in err


def test_a_malformed_head_is_exit_2(log: Path) -> None:
    code, _, err = _run("verify", "--log", str(log), "--head", "abc")
    assert code == 2
    assert "64 hex digits" in err


def test_list_filters_by_decision_reason_device_and_action(log: Path) -> None:
    code, out, err = _run("list", "--log", str(log), "--decision", "reject", "--format", "json")
    assert code == 0, err
    rejected = json.loads(out)
    assert [(r["action"], r["reason"]) for r in rejected] == [
        ("envelope", "software_key_refused"),
        ("revoke", "operator_unauthorized"),
    ]
    assert all(len(r["hash"]) == 64 and r["time"].endswith("+00:00") for r in rejected)

    code, out, _ = _run(
        "list", "--log", str(log), "--reason", "software_key_refused", "--format", "json"
    )
    (refused,) = json.loads(out)
    device = refused["device_id"]
    assert device.startswith("dev-")

    code, out, _ = _run("list", "--log", str(log), "--device", device, "--decision", "accepted")
    assert code == 0
    assert "1 audit entry" in out
    assert "envelope" in out

    code, out, _ = _run("list", "--log", str(log), "--action", "revoke", "--format", "json")
    assert [r["reason"] for r in json.loads(out)] == ["operator_unauthorized"]


def test_an_action_the_log_never_records_is_exit_2_naming_those_it_does(log: Path) -> None:
    code, out, err = _run("list", "--log", str(log), "--action", "enrol")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "--action 'enrol' is not an action the audit log records" in err
    for action in ("enroll", "envelope", "aggregation_job", "batch_collection", "retention"):
        assert action in err


def test_the_list_help_names_every_action() -> None:
    result = CliRunner().invoke(app, ["audit", "list", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for action in AUDIT_ACTIONS:
        assert action in text


def test_json_records_carry_what_an_auditor_needs_to_recheck_the_hashes(log: Path) -> None:
    code, out, _ = _run("list", "--log", str(log), "--format", "json")
    assert code == 0
    records = json.loads(out)
    assert [r["seq"] for r in records] == [1, 2, 3]
    for before, after in itertools.pairwise(records):
        assert after["prev_hash"] == before["hash"]
    first = records[0]
    fields = {k: first[k] for k in ("seq", "at", "action", "decision", "device_id", "reason")}
    canonical = json.dumps(
        {**fields, "detail": first["detail"], "prev_hash": first["prev_hash"]},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert hashlib.sha256(canonical.encode()).hexdigest() == first["hash"]


def test_a_bad_decision_is_exit_2(log: Path) -> None:
    code, _, err = _run("list", "--log", str(log), "--decision", "maybe")
    assert code == 2
    assert "accept or reject" in err


def test_the_auditor_tools_never_write_the_log(log: Path) -> None:
    before = [tuple(r) for r in sqlite3.connect(log).execute("SELECT * FROM audit").fetchall()]
    for args in (["verify"], ["list"], ["list", "--format", "json"]):
        assert _run(*args, "--log", str(log))[0] == 0
    after = [tuple(r) for r in sqlite3.connect(log).execute("SELECT * FROM audit").fetchall()]
    assert after == before


def _damage_page_of(path: Path, table: str) -> None:
    """Overwrite the type byte of `table`'s root b-tree page: SQLite then finds the
    file malformed when it reads that table (a disk fault, a bad copy)."""
    db = sqlite3.connect(path)
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff")


@pytest.mark.parametrize("command", ["verify", "list"])
def test_a_damaged_log_is_exit_2_not_a_broken_chain_nor_a_traceback(
    log: Path, command: str
) -> None:
    """Exit 1 says the chain is broken (tampering); a file SQLite cannot read is bad
    input, one line and exit 2, as scripts must tell the two apart."""
    _damage_page_of(log, "audit")
    code, out, err = _run(command, "--log", str(log))
    assert code == 2, out + err
    assert "cannot be read as an audit log" in err
    assert "Traceback" not in out + err


def test_a_log_of_another_layout_is_exit_2(log: Path) -> None:
    _tamper(log, "ALTER TABLE audit RENAME COLUMN hash TO h")
    code, _, err = _run("verify", "--log", str(log))
    assert code == 2
    assert "no such column: hash" in err


def test_list_shows_markup_a_sender_chose_as_text(tmp_path: Path) -> None:
    # Review s18b: an anonymous item's key "[/x]" in a refusal's detail crashed the table
    # (rich MarkupError), and "[link=...]" became a hyperlink.
    path = tmp_path / "audit.sqlite3"
    audit = AuditLog(path)
    audit.append(
        AuditRecord(
            "envelope", "rejected", None, "schema_invalid", "[/x] [link=https://evil]x\x1b[2J"
        )
    )
    audit.close()
    result = CliRunner().invoke(app, ["audit", "list", "--log", str(path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.stderr
    assert "[/x] [link=https://evil]x\\x1b[2J" in result.stdout
