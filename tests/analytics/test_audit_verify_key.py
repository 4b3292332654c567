"""`quietwire audit verify --audit-key`: the checkpoints an ingest signed, checked by an
auditor who holds only the public key the ingest published."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ingest import IngestSettings, InMemoryEnvelopeBus, create_app, write_private_key
from quietwire.cli import app
from tests.auditlog.tamper import execute, rewrite_chain
from tests.ingest.kit import SERVED_POLICIES, Device, asgi_client
from warehouse import connect


async def _serve(root: Path) -> str:
    """Run an ingest over a few requests; returns the audit key it published."""
    key = write_private_key(root / "ingest.key")
    settings = IngestSettings(
        policy_paths=SERVED_POLICIES,
        region="eu-test",
        private_key_path=root / "ingest.key",
        state_dir=root / "state",
    )
    device = Device("eu-test")
    async with asgi_client(create_app(settings, bus=InMemoryEnvelopeBus())) as client:
        published = (await client.get("/v1/audit-key")).json()
        assert published["algorithm"] == "ed25519"
        for _ in range(3):
            await client.post("/v1/envelopes", json={"envelopes": [device.item(key.public_key)]})
    return str(published["public_key"])


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, str]:
    audit_key = asyncio.run(_serve(tmp_path))
    return tmp_path / "state" / "audit.sqlite3", audit_key


def _verify(log: Path, *extra: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["audit", "verify", "--log", str(log), *extra])
    return result.exit_code, result.stdout, result.stderr


def test_the_log_of_a_stopped_ingest_verifies_against_its_published_key(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    log, audit_key = served
    key_file = tmp_path / "audit.pub"
    key_file.write_text(audit_key + "\n")

    for given in (audit_key, str(key_file)):
        code, out, err = _verify(log, "--audit-key", given)
        assert code == 0, err
        assert "audit log OK: 3 entries" in out
        # signed at start (empty log) and at shutdown: nothing left uncovered
        assert "checkpoints: 2 signed by the audit key, all match the chain" in out
        assert "not yet covered" not in out


def test_a_rehashed_chain_is_exit_1(served: tuple[Path, str]) -> None:
    log, audit_key = served
    rewrite_chain(log, 1, "nothing to see")
    assert _verify(log)[0] == 0  # the chain alone verifies

    code, out, _ = _verify(log, "--audit-key", audit_key)
    assert code == 1
    assert "BROKEN: checkpoint at seq 3" in out
    assert "rewritten" in out


def test_a_log_cut_off_before_its_checkpoint_is_exit_1(served: tuple[Path, str]) -> None:
    log, audit_key = served
    execute(log, "DELETE FROM audit WHERE seq = 3")
    code, out, _ = _verify(log, "--audit-key", audit_key)
    assert code == 1
    assert "truncated" in out


def test_another_key_is_exit_1_and_a_bad_key_exit_2(served: tuple[Path, str]) -> None:
    log, _ = served
    other = base64.b64encode(bytes(range(32))).decode()
    code, out, _ = _verify(log, "--audit-key", other)
    assert code == 1
    assert "does not verify under the audit key" in out

    code, _, err = _verify(log, "--audit-key", "c2hvcnQ=")
    assert code == 2
    assert "32 bytes" in err


def _audit_report(root: Path, log: Path, *extra: str) -> tuple[int, str, str]:
    db = root / "warehouse.duckdb"
    if not db.exists():
        connect(db).close()
    result = CliRunner().invoke(
        app, ["audit", "report", "--db", str(db), "--log", str(log), *extra]
    )
    return result.exit_code, result.stdout, result.stderr


def test_the_auditor_report_verifies_the_checkpoints_with_the_key(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    log, audit_key = served
    code, out, err = _audit_report(tmp_path, log, "--audit-key", audit_key)
    assert code == 0, err
    assert "OK, 3 entries" in out
    assert "2 signed checkpoint(s) verify" in out
    code, out, err = _audit_report(tmp_path, log, "--audit-key", audit_key, "--format", "json")
    assert code == 0, err
    chain = json.loads(out)["audit_log"]
    assert (chain["ok"], chain["signed_checkpoints"], chain["unsigned_entries"]) == (True, 2, 0)
    # Without the key the report says what it did not check.
    code, out, _ = _audit_report(tmp_path, log)
    assert code == 0
    assert "checkpoints not verified (--audit-key)" in out


def test_the_auditor_report_catches_a_rehashed_chain_only_with_the_key(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    log, audit_key = served
    rewrite_chain(log, 1, "nothing to see")
    assert _audit_report(tmp_path, log)[0] == 0  # the chain alone verifies
    code, out, _ = _audit_report(tmp_path, log, "--audit-key", audit_key)
    assert code == 1
    assert "BROKEN after 1 verified checkpoint(s)" in out
    assert "rewritten" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audit-key", "not base64!"], "--audit-key:"),
        (["--audit-key", base64.b64encode(b"short").decode()], "--audit-key:"),
    ],
)
def test_a_bad_key_for_the_auditor_report_is_exit_2(
    served: tuple[Path, str], tmp_path: Path, args: list[str], message: str
) -> None:
    log, _ = served
    code, _, err = _audit_report(tmp_path, log, *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
